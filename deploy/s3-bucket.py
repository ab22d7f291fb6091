"""Create the artifact bucket unless it exists: the s3 profile's one-shot `s3-bucket` service.

Speaks plain S3 (boto3, in the server's image), so it works with MinIO, AWS S3 or any other S3
endpoint. Reads BUCKET, MLFLOW_S3_ENDPOINT_URL (empty: AWS S3) and the AWS_* credentials, waits up
to S3_WAIT_SECONDS (60) for the endpoint to answer, and exits 0 once the bucket is there.
"""

from __future__ import annotations

import os
import sys
import time

import boto3
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as NoConnection


def say(message: str) -> None:
    print(f"s3-bucket: {message}", file=sys.stderr, flush=True)


def status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def ensure(s3, bucket: str) -> str:
    """'exists' or 'created'; raises what the store answered otherwise."""
    try:
        s3.head_bucket(Bucket=bucket)
        return "exists"
    except ClientError as error:
        if status(error) != 404:
            raise
    region = s3.meta.region_name
    extra = {}
    if region and region != "us-east-1":  # S3 wants the region named, except for us-east-1
        extra = {"CreateBucketConfiguration": {"LocationConstraint": region}}
    try:
        s3.create_bucket(Bucket=bucket, **extra)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
            raise
    return "created"


def main() -> int:
    bucket = os.environ.get("BUCKET", "")
    if not bucket:
        say("BUCKET is not set")
        return 2
    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None
    s3 = boto3.client("s3", endpoint_url=endpoint)
    where = endpoint or "AWS S3"
    deadline = time.monotonic() + float(os.environ.get("S3_WAIT_SECONDS", "60"))
    while True:
        try:
            say(f"bucket {bucket} at {where}: {ensure(s3, bucket)}")
            return 0
        except ClientError as error:
            if status(error) < 500:  # refused (credentials, permissions, name): waiting won't help
                say(f"bucket {bucket} at {where}: {error}")
                return 1
            problem = str(error)  # starting up
        except (NoConnection, HTTPClientError) as error:
            problem = str(error)  # not listening yet, or hung up
        if time.monotonic() > deadline:
            say(f"{where} did not answer in time: {problem}")
            return 1
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
