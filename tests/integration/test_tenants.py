"""Two teams on one server (`--tenants`), through boto3: each may touch only what it is granted.

Every path by which one team could read or write the other's data is tried: a job's input, its output,
an image its records reference, another job's folder nested in its outputs, a result forged into another
job's folder. The server runs on local buckets and on a real S3-protocol server (moto_server).
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from PIL import Image

from bulkinfer.cli.remote import ServerOutputs
from tests.conftest import SLOW_ECHO_CATALOG, anthropic_record
from tests.integration.test_bedrock_api import Server, client, create, start_server, wait_status
from tests.moto import S3_CREDENTIALS, moto_server, s3_client

TEAM_A = ("AKIDTEAMA", "team-a-secret")
TEAM_A2 = ("AKIDTEAMA2", "team-a-second-secret")
TEAM_B = ("AKIDTEAMB", "team-b-secret")
TENANTS = """
[tenants.team-a]
access_keys = { AKIDTEAMA = "BI_TEST_TEAM_A_SECRET", AKIDTEAMA2 = "BI_TEST_TEAM_A2_SECRET" }
grants = ["s3://team-a/", "s3://shared/team-a/"]
read_only = ["s3://reference-data/"]

[tenants.team-b]
access_keys = { AKIDTEAMB = "BI_TEST_TEAM_B_SECRET" }
grants = ["s3://team-b/", "s3://shared/team-b/"]
models = ["echo", "slow-*"]
max_active_jobs = 2
"""
SECRETS = {
    "BI_TEST_TEAM_A_SECRET": TEAM_A[1],
    "BI_TEST_TEAM_A2_SECRET": TEAM_A2[1],
    "BI_TEST_TEAM_B_SECRET": TEAM_B[1],
}
BUCKETS = ("team-a", "team-b", "shared", "reference-data")


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), "blue").save(out, format="PNG")
    return out.getvalue()


def lines(count: int, prefix: str = "R") -> bytes:
    return b"".join(
        orjson.dumps(anthropic_record(f"{prefix}{i}", f"hello {i}")) + b"\n" for i in range(count)
    )


def image_record(record_id: str, uri: str) -> bytes:
    body = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 32,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "url", "url": uri}},
                    {"type": "text", "text": "what is this?"},
                ],
            }
        ],
    }
    return orjson.dumps({"recordId": record_id, "modelInput": body}) + b"\n"


@dataclass
class Deployment:
    server: Server
    s3: Any | None
    """boto3's S3 client of the S3-protocol server; None with local buckets."""

    def put(self, uri: str, data: bytes) -> None:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if self.s3 is not None:
            self.s3.put_object(Bucket=bucket, Key=key, Body=data)
            return
        path = self.server.data_dir / "s3" / bucket / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def keys(self, uri: str) -> list[str]:
        """Every object under a prefix, as s3:// URIs."""
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if self.s3 is not None:
            listed = self.s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
            return sorted(f"s3://{bucket}/{o['Key']}" for o in listed)
        root = self.server.data_dir / "s3" / bucket
        return sorted(
            f"s3://{bucket}/{p.relative_to(root).as_posix()}"
            for p in (root / prefix).rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )

    def bedrock(self, key: tuple[str, str]) -> Any:
        return client(self.server, *key)

    def outputs(self, arn: str, key: tuple[str, str]) -> ServerOutputs:
        return ServerOutputs(self.server.url, arn.rsplit("/", 1)[1], Credentials(*key), "eu-west-1")


@pytest.fixture(scope="module", params=["local-buckets", "s3-endpoint"])
def teams(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("tenants")
    catalog = root / "models.toml"
    catalog.write_text(SLOW_ECHO_CATALOG)
    tenants = root / "tenants.toml"
    tenants.write_text(TENANTS)
    with pytest.MonkeyPatch.context() as env, _s3(request.param) as endpoint:
        for name, value in {**SECRETS, **S3_CREDENTIALS}.items():
            env.setenv(name, value)
        extra = ["--s3-endpoint-url", endpoint] if endpoint else []
        server = start_server(root / "data", catalog, "--tenants", str(tenants), *extra)
        s3 = None
        if endpoint:
            s3 = s3_client(endpoint)
            for bucket in BUCKETS:
                s3.create_bucket(Bucket=bucket)
        try:
            yield Deployment(server, s3)
        finally:
            server.stop()


@pytest.fixture
def team_a(teams: Deployment) -> Any:
    return teams.bedrock(TEAM_A)


@pytest.fixture
def team_b(teams: Deployment) -> Any:
    return teams.bedrock(TEAM_B)


def _s3(kind: str) -> Any:
    @contextlib.contextmanager
    def endpoint() -> Iterator[str | None]:
        if kind == "local-buckets":
            yield None
            return
        with moto_server() as port:
            yield f"http://127.0.0.1:{port}"

    return endpoint()


def refused(call: Any, code: str = "AccessDeniedException") -> str:
    with pytest.raises(ClientError) as caught:
        call()
    assert caught.value.response["Error"]["Code"] == code, caught.value.response
    return str(caught.value.response["Error"]["Message"])


def test_a_job_reads_and_writes_only_inside_its_tenants_grants(teams: Deployment, team_a: Any) -> None:
    teams.put("s3://team-b/private/in.jsonl", lines(3))
    teams.put("s3://team-a/in/in.jsonl", lines(3))
    message = refused(lambda: create(team_a, "steal", "s3://team-b/private/in.jsonl", "s3://team-a/out/"))
    assert "s3://team-b/private/in.jsonl" in message and "not granted" in message
    message = refused(lambda: create(team_a, "plant", "s3://team-a/in/in.jsonl", "s3://team-b/out/"))
    assert "s3://team-b/out/" in message and "writing" in message
    # a path that a normalizer would read as another bucket's is no grant either
    refused(lambda: create(team_a, "climb", "s3://team-a/../team-b/private/in.jsonl", "s3://team-a/out/"))
    refused(lambda: create(team_a, "prefix", "s3://team-a-other/in.jsonl", "s3://team-a/out/"))
    assert teams.keys("s3://team-b/out/") == []
    names = [j["jobName"] for j in team_a.list_model_invocation_jobs()["invocationJobSummaries"]]
    assert not {"steal", "plant", "climb", "prefix"} & set(names)  # refused before any job existed

    arn = create(team_a, "own", "s3://team-a/in/in.jsonl", "s3://shared/team-a/out/")
    assert wait_status(team_a, arn, {"Completed", "Failed"})["status"] == "Completed"
    job_id = arn.rsplit("/", 1)[1]
    assert f"s3://shared/team-a/out/{job_id}/in.jsonl.out" in teams.keys("s3://shared/team-a/out/")


def test_a_read_only_prefix_can_be_read_but_not_written(teams: Deployment, team_a: Any) -> None:
    teams.put("s3://reference-data/golden/in.jsonl", lines(2, "G"))
    arn = create(team_a, "reads-reference", "s3://reference-data/golden/in.jsonl", "s3://team-a/ref-out/")
    assert wait_status(team_a, arn, {"Completed", "Failed"})["status"] == "Completed"
    message = refused(
        lambda: create(team_a, "writes-reference", "s3://team-a/in/in.jsonl", "s3://reference-data/out/")
    )
    assert "writing" in message


def test_image_references_outside_the_grants_are_error_lines(teams: Deployment, team_a: Any) -> None:
    teams.put("s3://team-b/secret.png", png())
    teams.put("s3://team-a/pics/ok.png", png())
    records = (
        image_record("theirs", "s3://team-b/secret.png")
        + image_record("missing", "s3://team-b/no-such.png")
        + image_record("mine", "s3://team-a/pics/ok.png")
    )
    teams.put("s3://team-a/images/in.jsonl", records)
    arn = create(team_a, "images", "s3://team-a/images/in.jsonl", "s3://team-a/images-out/")
    job = wait_status(team_a, arn, {"Completed", "PartiallyCompleted", "Failed"})
    assert job["status"] == "Completed", job.get("message")
    out = b"".join(teams.outputs(arn, TEAM_A).blocks("in.jsonl.out"))
    by_id = {line["recordId"]: line for line in map(orjson.loads, out.splitlines())}
    theirs, missing = by_id["theirs"]["error"]["errorMessage"], by_id["missing"]["error"]["errorMessage"]
    assert "not granted" in theirs and "not granted" in missing
    # the same words whether the object exists or not: nothing is learnt of another team's bucket
    assert theirs.split(": ", 1)[1].replace("secret", "X") == missing.split(": ", 1)[1].replace(
        "no-such", "X"
    )
    assert "modelOutput" in by_id["mine"]


def test_outputs_list_only_the_files_the_job_wrote(teams: Deployment, team_a: Any, team_b: Any) -> None:
    teams.put("s3://team-a/nest/in.jsonl", lines(2, "N"))
    first = create(team_a, "first", "s3://team-a/nest/in.jsonl", "s3://team-a/nest-out/")
    wait_status(team_a, first, {"Completed"})
    first_id = first.rsplit("/", 1)[1]
    # a second job pointed at the first one's folder writes under it, a folder of its own
    second = create(team_a, "second", "s3://team-a/nest/in.jsonl", f"s3://team-a/nest-out/{first_id}/")
    wait_status(team_a, second, {"Completed"})
    teams.put(f"s3://team-a/nest-out/{first_id}/planted.jsonl.out", b'{"forged": true}\n')
    second_id = second.rsplit("/", 1)[1]
    assert any(second_id in key for key in teams.keys(f"s3://team-a/nest-out/{first_id}/"))
    listed = teams.outputs(first, TEAM_A).names()
    assert listed == ["in.jsonl.out", "manifest.json.out"]
    with pytest.raises(ClientError):
        list(teams.outputs(first, TEAM_A).blocks(f"{second_id}/in.jsonl.out"))
    with pytest.raises(ClientError):
        list(teams.outputs(first, TEAM_A).blocks("planted.jsonl.out"))
    # the other team can neither read the job's outputs nor write into its folder
    with pytest.raises(ClientError, match="ResourceNotFound"):
        teams.outputs(first, TEAM_B).names()
    teams.put("s3://team-b/in.jsonl", lines(1))
    refused(lambda: create(team_b, "forge", "s3://team-b/in.jsonl", f"s3://team-a/nest-out/{first_id}/"))


def test_jobs_are_the_tenants_not_the_keys(teams: Deployment, team_a: Any, team_b: Any) -> None:
    teams.put("s3://team-a/in/in.jsonl", lines(3))
    arn = create(team_a, "shared-by-keys", "s3://team-a/in/in.jsonl", "s3://team-a/out/")
    second_key = teams.bedrock(TEAM_A2)
    assert second_key.get_model_invocation_job(jobIdentifier=arn)["jobName"] == "shared-by-keys"
    refused(lambda: team_b.get_model_invocation_job(jobIdentifier=arn), "ResourceNotFoundException")
    names = {j["jobName"] for j in team_b.list_model_invocation_jobs()["invocationJobSummaries"]}
    assert "shared-by-keys" not in names
    refused(lambda: team_b.stop_model_invocation_job(jobIdentifier=arn), "ResourceNotFoundException")


def test_models_and_active_jobs_are_limited_per_tenant(teams: Deployment, team_b: Any) -> None:
    teams.put("s3://team-b/limits/in.jsonl", lines(2))
    teams.put("s3://team-b/limits/long.jsonl", lines(400, "L"))
    message = refused(
        lambda: create(team_b, "no-ocr", "s3://team-b/limits/in.jsonl", "s3://team-b/o/", "ocr")
    )
    assert "ocr" in message
    token = "first-of-two"
    arns = [
        create(
            team_b,
            "long-1",
            "s3://team-b/limits/long.jsonl",
            "s3://team-b/o/",
            "slow-echo",
            clientRequestToken=token,
        ),
        create(team_b, "long-2", "s3://team-b/limits/long.jsonl", "s3://team-b/o/", "slow-echo"),
    ]
    try:
        message = refused(
            lambda: create(team_b, "third", "s3://team-b/limits/in.jsonl", "s3://team-b/o/"),
            "ServiceQuotaExceededException",
        )
        assert "max_active_jobs" in message
        # a create repeated with its client token is the job already made, not a new one
        again = create(
            team_b,
            "long-1",
            "s3://team-b/limits/long.jsonl",
            "s3://team-b/o/",
            "slow-echo",
            clientRequestToken=token,
        )
        assert again == arns[0]
    finally:
        for arn in arns:
            with contextlib.suppress(ClientError):  # it ended already
                team_b.stop_model_invocation_job(jobIdentifier=arn)
        for arn in arns:
            wait_status(team_b, arn, {"Stopped", "Completed", "Failed"})
    after = create(team_b, "after-the-others", "s3://team-b/limits/in.jsonl", "s3://team-b/o/")
    assert wait_status(team_b, after, {"Completed", "Failed"})["status"] == "Completed"


def test_a_tenants_file_problem_stops_the_server_at_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "bulkinfer", "serve", "--port", "0", "--data-dir", str(tmp_path)]
        clean = {k: v for k, v in os.environ.items() if not k.startswith("BI_TEST_")}
        return subprocess.run(
            [*command, *args], capture_output=True, text=True, timeout=60, env={**clean, **(env or {})}
        )

    tenants = tmp_path / "tenants.toml"
    tenants.write_text(TENANTS)
    missing = serve("--tenants", str(tenants))
    assert missing.returncode == 2 and "BI_TEST_TEAM_A_SECRET" in missing.stderr
    both = serve("--tenants", str(tenants), "--insecure-dev", env=SECRETS)
    assert both.returncode == 2 and "cannot be used together" in both.stderr
    empty = serve("--access-keys", ",")
    assert empty.returncode == 2 and "no KEY:SECRET" in empty.stderr
    tenants.write_text(TENANTS.replace("max_active_jobs", "max_jobs"))
    unknown = serve("--tenants", str(tenants), env=SECRETS)
    assert unknown.returncode == 2 and "tenants.team-b.max_jobs: unknown key" in unknown.stderr
    tenants.write_text(TENANTS)

    def watch(model: str, *tenant: str) -> subprocess.CompletedProcess[str]:
        inbox = ["--watch", "s3://team-b/inbox", "--watch-model", model]
        return serve(
            "--tenants", str(tenants), *inbox, *(["--watch-tenant", *tenant] if tenant else []), env=SECRETS
        )

    whose = watch("echo")
    assert whose.returncode == 2 and "--watch-tenant" in whose.stderr
    unusable = watch("ocr", "team-b")
    assert unusable.returncode == 2 and "model 'ocr' is not granted" in unusable.stderr
    stolen = watch("echo", "team-a")
    assert stolen.returncode == 2 and "s3://team-b/inbox/" in stolen.stderr
    tenants.write_text(TENANTS.replace('"slow-*"', '"slow-ehco"'))
    typo = serve("--tenants", str(tenants), env=SECRETS)
    assert typo.returncode == 2 and "'slow-ehco' matches no model" in typo.stderr


def test_a_tenant_removed_from_the_file_has_its_waiting_jobs_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its grants went with it: a job it left behind fails saying so, rather than run or wait forever."""
    from bulkinfer.store.batch_jobs import BatchJobStore

    catalog = tmp_path / "models.toml"
    catalog.write_text(SLOW_ECHO_CATALOG)
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(TENANTS)
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    server = start_server(tmp_path / "data", catalog, "--tenants", str(tenants), "--jobs-per-model", "1")
    deployment = Deployment(server, None)
    deployment.put("s3://team-b/long.jsonl", lines(900, "L"))
    team_b = deployment.bedrock(TEAM_B)
    running = create(team_b, "running", "s3://team-b/long.jsonl", "s3://team-b/o/", "slow-echo")
    wait_status(team_b, running, {"InProgress"})
    waiting = create(team_b, "waiting", "s3://team-b/long.jsonl", "s3://team-b/o/", "slow-echo")
    wait_status(team_b, waiting, {"Scheduled"})
    server.stop()

    tenants.write_text(TENANTS.split("[tenants.team-b]")[0])
    server = start_server(tmp_path / "data", catalog, "--tenants", str(tenants))
    try:
        store = BatchJobStore(f"sqlite:///{tmp_path / 'data' / 'bulkinfer.db'}")
        try:
            for arn in (running, waiting):
                job_id = arn.rsplit("/", 1)[1]
                deadline = time.monotonic() + 60
                while (job := store.get(job_id)) is not None and job.status.value != "Failed":
                    assert time.monotonic() < deadline, job
                    time.sleep(0.2)
                assert job is not None and "not granted to tenant 'team-b'" in (job.message or "")
        finally:
            store.close()
        with pytest.raises(ClientError, match="UnrecognizedClient"):
            Deployment(server, None).bedrock(TEAM_B).list_model_invocation_jobs()
    finally:
        server.stop()


def test_access_keys_are_one_team(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The quick form: every key of ``--access-keys`` (here from the environment) is one tenant."""
    catalog = tmp_path / "models.toml"
    catalog.write_text(SLOW_ECHO_CATALOG)
    monkeypatch.setenv("BULKINFER_ACCESS_KEYS", "AKIDONE:one-secret,AKIDTWO:two-secret")
    server = start_server(tmp_path / "data", catalog, "--jobs-per-model", "2")
    try:
        deployment = Deployment(server, None)
        deployment.put("s3://any-bucket/in.jsonl", lines(2))
        one, two = (
            deployment.bedrock(("AKIDONE", "one-secret")),
            deployment.bedrock(("AKIDTWO", "two-secret")),
        )
        arn = create(one, "ours", "s3://any-bucket/in.jsonl", "s3://other-bucket/out/")
        assert wait_status(two, arn, {"Completed", "Failed"})["status"] == "Completed"
        refused(lambda: deployment.bedrock(("AKIDONE", "wrong")).list_model_invocation_jobs())
    finally:
        server.stop()


def test_a_link_in_a_local_bucket_is_granted_by_where_it_leads(teams: Deployment, team_b: Any) -> None:
    """In one bucket shared by two teams, team-b links its folder's files to team-a's: an input file,
    an image and its output folder. Each is refused; the job's files are granted where they lead."""
    if teams.s3 is not None:
        pytest.skip("an S3-protocol server has no symbolic links")
    shared = teams.server.data_dir / "s3" / "shared"
    teams.put("s3://shared/team-a/secret.jsonl", lines(1, "A-SECRET"))
    teams.put("s3://shared/team-a/secret.png", png())
    (shared / "team-a" / "link-target").mkdir(parents=True, exist_ok=True)
    mine = shared / "team-b"
    (mine / "in").mkdir(parents=True, exist_ok=True)
    (mine / "in" / "linked.jsonl").symlink_to(shared / "team-a" / "secret.jsonl")
    teams.put("s3://shared/team-b/plain/in.jsonl", lines(1))
    (mine / "out").symlink_to(shared / "team-a" / "link-target")
    (mine / "pic.png").symlink_to(shared / "team-a" / "secret.png")
    teams.put("s3://shared/team-b/pics/in.jsonl", image_record("linked", "s3://shared/team-b/pic.png"))

    read = create(team_b, "linked-input", "s3://shared/team-b/in/", "s3://team-b/o/")
    assert "linked.jsonl leads outside" in wait_status(team_b, read, {"Failed"})["message"]
    write = create(team_b, "linked-output", "s3://shared/team-b/plain/in.jsonl", "s3://shared/team-b/out/")
    assert "leads outside what tenant 'team-b' may write" in wait_status(team_b, write, {"Failed"})["message"]
    assert list((shared / "team-a" / "link-target").iterdir()) == []
    image = create(team_b, "linked-image", "s3://shared/team-b/pics/in.jsonl", "s3://team-b/pics-out/")
    assert wait_status(team_b, image, {"Completed", "Failed"})["status"] == "Completed"
    (line,) = map(orjson.loads, b"".join(teams.outputs(image, TEAM_B).blocks("in.jsonl.out")).splitlines())
    assert "not granted" in line["error"]["errorMessage"]


def test_a_link_on_a_jobs_own_folder_reaches_nothing_of_another_tenant(
    teams: Deployment, team_a: Any, team_b: Any
) -> None:
    """team-b links its job's folder, or one of its output files, to team-a's: its job writes nothing
    through the link, and its outputs routes serve nothing of team-a's."""
    if teams.s3 is not None:
        pytest.skip("an S3-protocol server has no symbolic links")
    buckets = teams.server.data_dir / "s3"
    teams.put("s3://shared/team-a/own/in.jsonl", lines(2, "A-SECRET"))
    theirs = create(team_a, "theirs", "s3://shared/team-a/own/in.jsonl", "s3://shared/team-a/own-out/")
    wait_status(team_a, theirs, {"Completed"})
    their_folder = buckets / "shared" / "team-a" / "own-out" / theirs.rsplit("/", 1)[1]
    before = {p.name: p.read_bytes() for p in their_folder.iterdir()}

    # a link put where the job will write, before it does
    teams.put("s3://shared/team-b/slow/in.jsonl", lines(200, "B"))
    writer = create(
        team_b, "writer", "s3://shared/team-b/slow/in.jsonl", "s3://shared/team-b/w/", "slow-echo"
    )
    (buckets / "shared" / "team-b" / "w").mkdir(parents=True, exist_ok=True)
    (buckets / "shared" / "team-b" / "w" / writer.rsplit("/", 1)[1]).symlink_to(their_folder)
    job = wait_status(team_b, writer, {"Completed", "Failed"})
    assert job["status"] == "Failed" and "symbolic link" in job["message"], job
    assert {p.name: p.read_bytes() for p in their_folder.iterdir()} == before

    # links put in place of an ended job's folder, or of one of its files
    teams.put("s3://shared/team-b/r/in.jsonl", lines(1, "B"))
    reader = create(team_b, "reader", "s3://shared/team-b/r/in.jsonl", "s3://shared/team-b/r-out/")
    wait_status(team_b, reader, {"Completed"})
    folder = buckets / "shared" / "team-b" / "r-out" / reader.rsplit("/", 1)[1]
    (folder / "in.jsonl.out").unlink()
    (folder / "in.jsonl.out").symlink_to(their_folder / "in.jsonl.out")
    assert teams.outputs(reader, TEAM_B).names() == ["manifest.json.out"]
    folder.rename(folder.with_name("moved"))
    folder.symlink_to(their_folder)
    assert teams.outputs(reader, TEAM_B).names() == []
    with pytest.raises(ClientError):
        list(teams.outputs(reader, TEAM_B).blocks("in.jsonl.out"))


def test_an_object_key_that_climbs_fails_the_job_naming_it(teams: Deployment, team_a: Any) -> None:
    """On an S3-protocol server a key may hold '..': staged as it is, it would land outside the job's
    folder. The job fails naming the key, and nothing of it is written anywhere."""
    if teams.s3 is None:
        pytest.skip("local buckets are folders: a key cannot hold '..'")
    teams.put("s3://team-a/climb/ok.jsonl", lines(1))
    teams.put("s3://team-a/climb/../../../../escape.jsonl", lines(1, "ESCAPE"))
    assert "s3://team-a/climb/../../../../escape.jsonl" in teams.keys("s3://team-a/climb/")
    arn = create(team_a, "climber", "s3://team-a/climb/", "s3://team-a/climb-out/")
    job = wait_status(team_a, arn, {"Failed", "Completed"})
    assert job["status"] == "Failed" and "climb/../../../../escape.jsonl" in job["message"], job
    root = teams.server.data_dir.parent
    assert not [p for p in root.rglob("escape.jsonl")], "a climbing key was written"
    assert teams.keys("s3://team-a/climb-out/") == []
