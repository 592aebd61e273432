"""bedrock-runtime: InvokeModel and Converse, as the boto3 ``bedrock-runtime`` client calls them."""
