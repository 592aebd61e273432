"""The Amazon Bedrock batch control plane, as the unmodified boto3 ``bedrock`` client calls it."""
