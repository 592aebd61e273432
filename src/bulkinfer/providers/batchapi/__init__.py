"""Providers' own batch APIs (Bedrock's, OpenAI's, Anthropic's) as the model of a bulkinfer job."""
