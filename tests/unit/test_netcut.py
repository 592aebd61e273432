"""NetCut cuts a real S3-protocol server (moto) away from a keep-alive client, and gives it back."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ConnectionClosedError, EndpointConnectionError
from moto.server import ThreadedMotoServer

from tests.netcut import NetCut


@pytest.fixture(scope="module")
def moto_port() -> Iterator[int]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield server.get_host_and_port()[1]
    finally:
        server.stop()


def s3_client(url: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=5),
    )


def test_boto3_fails_while_cut_and_works_again_after_restore(moto_port: int) -> None:
    with NetCut(moto_port) as net:
        s3 = s3_client(net.url)
        s3.create_bucket(Bucket="netcut")
        s3.put_object(Bucket="netcut", Key="a", Body=b"one")
        port = net.port
        net.cut()
        assert net.is_cut
        for _ in range(3):  # the pooled keep-alive connection was reset, and new ones are refused
            with pytest.raises((EndpointConnectionError, ConnectionClosedError)):
                s3.get_object(Bucket="netcut", Key="a")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        net.restore()
        assert net.port == port and not net.is_cut
        body = s3.get_object(Bucket="netcut", Key="a")["Body"].read()
        assert body == b"one"
    with pytest.raises(ConnectionRefusedError):  # closed: nothing listens there any more
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_cut_and_restore_can_repeat_and_a_large_body_goes_through(moto_port: int) -> None:
    with NetCut(moto_port) as net:
        s3 = s3_client(net.url)
        s3.create_bucket(Bucket="netcut-big")
        body = bytes(range(256)) * 12_000  # 3 MB both ways
        for _ in range(3):
            net.cut()
            net.cut()  # cutting twice is harmless
            with pytest.raises((EndpointConnectionError, ConnectionClosedError)):
                s3.put_object(Bucket="netcut-big", Key="k", Body=body)
            net.restore()
            s3.put_object(Bucket="netcut-big", Key="k", Body=body)
            assert s3.get_object(Bucket="netcut-big", Key="k")["Body"].read() == body


def test_cut_after_cuts_in_the_middle_of_an_upload(moto_port: int) -> None:
    with NetCut(moto_port) as net:
        s3 = s3_client(net.url)
        s3.create_bucket(Bucket="netcut-mid")
        net.cut_after(300_000)
        with pytest.raises((EndpointConnectionError, ConnectionClosedError)):
            s3.put_object(Bucket="netcut-mid", Key="k", Body=b"x" * 1_000_000)
        assert net.is_cut
        net.restore()  # the budget is spent: forwarding goes on without a limit
        s3.put_object(Bucket="netcut-mid", Key="k", Body=b"y" * 1_000_000)
        assert s3.get_object(Bucket="netcut-mid", Key="k")["Body"].read() == b"y" * 1_000_000
