"""Grants, tenants and the tenants file: pure logic."""

from __future__ import annotations

from pathlib import Path

import pytest

from bulkinfer.api.auth import parse_keys
from bulkinfer.api.tenants import check_models, load_tenants, single_tenant
from bulkinfer.domain.tenant import (
    ALL_GRANTED,
    Grants,
    NotGranted,
    Tenant,
    Tenants,
    is_plain_key,
    normalized_grant,
)
from bulkinfer.errors import ConfigError, UnknownModelError
from bulkinfer.providers.catalog import Catalog

GRANTS = Grants(("s3://team-a/", "s3://shared/team-a/"), ("s3://reference/",))


@pytest.mark.parametrize(
    "uri",
    ["s3://team-a/x.jsonl", "s3://team-a/", "s3://team-a", "s3://shared/team-a/in/", "s3://shared/team-a"],
)
def test_uris_under_a_grant_may_be_read_and_written(uri: str) -> None:
    assert GRANTS.may_read(uri) and GRANTS.may_write(uri)


@pytest.mark.parametrize(
    "uri",
    [
        "s3://team-b/x.jsonl",
        "s3://team-ab/x.jsonl",  # a bucket whose name starts like a granted one
        "s3://shared/team-ab/x.jsonl",
        "s3://shared/",
        "s3://team-a/../team-b/x.jsonl",  # a normalizer would read another bucket
        "s3://team-a/./x.jsonl",
        "s3://team-a//x.jsonl",
        "s3://team-a/in/..",
        "file:///etc/passwd",
        "/team-a/x.jsonl",
        "s3:///team-a/x",
        "",
    ],
)
def test_anything_else_is_not_granted(uri: str) -> None:
    assert not GRANTS.may_read(uri) and not GRANTS.may_write(uri)


def test_a_read_only_prefix_is_read_not_written() -> None:
    assert GRANTS.may_read("s3://reference/golden.jsonl")
    assert not GRANTS.may_write("s3://reference/out/")


def test_everything_is_every_bucket_but_still_no_climbing() -> None:
    assert ALL_GRANTED.may_write("s3://any-bucket/any/key")
    assert not ALL_GRANTED.may_read("s3://any-bucket/../x")


def test_grants_are_folder_prefixes() -> None:
    assert normalized_grant("s3://team-a") == "s3://team-a/"
    assert normalized_grant("s3://shared/team-a/") == "s3://shared/team-a/"
    for bad in ("team-a/", "s3:///x", "s3://a/../b/", "http://a/"):
        with pytest.raises(ValueError):
            normalized_grant(bad)


def test_plain_keys() -> None:
    assert is_plain_key("a/b.jsonl") and is_plain_key("a/b/") and is_plain_key("")
    assert is_plain_key("v1..v2.jsonl")  # dots inside a segment are a name, not a climb
    for bad in ("a/../b", "./a", "a//b", "..", "/a"):
        assert not is_plain_key(bad)


def test_models_are_glob_patterns() -> None:
    tenant = Tenant("t", models=("echo", "claude-*"))
    assert tenant.may_use("echo") and tenant.may_use("claude-haiku")
    assert not tenant.may_use("ocr") and not tenant.may_use("echo-2")


def test_a_tenant_no_longer_configured_is_granted_nothing() -> None:
    tenants = Tenants({"a": Tenant("a")}, {"K": ("a", "s")})
    gone = tenants.get("removed")
    assert not gone.grants.may_read("s3://x/y") and not gone.may_use("echo")
    assert tenants.for_key("K") == (Tenant("a"), "s") and tenants.for_key("OTHER") is None
    assert Tenants(open=True).get("anyone").grants.may_write("s3://x/")


FILE = """
[tenants.team-a]
access_keys = { AKIDTEAMA = "TEAM_A_SECRET" }
grants = ["s3://team-a", "s3://shared/team-a/"]
read_only = ["s3://reference-data/"]
models = ["*"]
max_active_jobs = 20

[tenants.team-b]
access_keys = { AKIDTEAMB = "TEAM_B_SECRET" }
grants = ["s3://team-b/"]
"""
ENV = {"TEAM_A_SECRET": "a-secret", "TEAM_B_SECRET": "b-secret"}


def test_a_tenants_file_is_read_with_secrets_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(FILE)
    tenants = load_tenants(path, ENV)
    team_a, secret = tenants.for_key("AKIDTEAMA") or (None, "")
    assert team_a is not None and team_a.name == "team-a" and secret == "a-secret"
    assert team_a.grants == Grants(("s3://team-a/", "s3://shared/team-a/"), ("s3://reference-data/",))
    assert team_a.max_active_jobs == 20
    assert tenants.get("team-b").max_active_jobs is None


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (("max_active_jobs = 20", "max_jobs = 20"), "tenants.team-a.max_jobs: unknown key"),
        (('"s3://team-b/"', '"s3://team-b/../x/"'), "tenants.team-b.grants"),
        (('"TEAM_B_SECRET"', '"b-secret-itself!"'), "environment variable"),
        (('"TEAM_B_SECRET"', '"UNSET_SECRET"'), "UNSET_SECRET"),
        (("AKIDTEAMB", "AKIDTEAMA"), "also belongs to team-a"),
        (("max_active_jobs = 20", "max_active_jobs = 0"), "max_active_jobs"),
        (("[tenants.team-b]", "[tenants.team-b]]"), "invalid TOML"),
    ],
)
def test_a_tenants_file_problem_names_the_key(tmp_path: Path, change: tuple[str, str], says: str) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(FILE.replace(*change))
    with pytest.raises(ConfigError, match=says.replace(".", r"\.").replace("[", r"\[")):
        load_tenants(path, ENV)


def test_access_keys_form_one_tenant_granted_everything() -> None:
    tenants = single_tenant({"K1": "s1", "K2": "s2"})
    first, second = tenants.for_key("K1"), tenants.for_key("K2")
    assert first is not None and second is not None and first[0] == second[0]
    assert first[0].grants == ALL_GRANTED
    with pytest.raises(ConfigError):
        single_tenant({})


@pytest.mark.parametrize(
    "typo", ["s3://Team-A/", "s3://team-a/ ", "s3://team-*/", "s3://team-a/in*/", "s3://a/"]
)
def test_a_grant_that_could_never_match_is_refused(typo: str) -> None:
    with pytest.raises(ValueError):
        normalized_grant(typo)


def test_a_secret_pasted_for_its_variable_is_not_echoed(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(FILE.replace('"TEAM_B_SECRET"', '"wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"'))
    with pytest.raises(ConfigError) as caught:
        load_tenants(path, ENV)
    assert "wJalrXUtn" not in str(caught.value) and "not the secret" in str(caught.value)


def test_a_misspelt_table_is_an_unknown_key(tmp_path: Path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(FILE.replace("[tenants.team-b]", "[tenant.team-b]"))
    with pytest.raises(ConfigError, match="tenant: unknown key"):
        load_tenants(path, ENV)


def test_model_patterns_must_match_the_catalog() -> None:
    tenants = Tenants({"t": Tenant("t", models=("echo", "smollm2-*"))})
    check_models(tenants, ["echo", "smollm2-135m-instruct"])
    with pytest.raises(ConfigError, match="'ehco' matches no model"):
        check_models(Tenants({"t": Tenant("t", models=("ehco",))}), ["echo"])


def test_an_unknown_model_lists_only_the_tenants_models() -> None:
    catalog = Catalog.load()
    tenant = Tenant("t", models=("echo*",))
    with pytest.raises(UnknownModelError) as caught:
        catalog.get("echo-nope", tenant.may_use)
    assert "available models: echo" in str(caught.value) and "ocr" not in str(caught.value)
    with pytest.raises(NotGranted):
        catalog.get("ocr", tenant.may_use)


def test_access_keys_given_twice_are_refused() -> None:
    with pytest.raises(ValueError, match="given twice"):
        parse_keys("K:one,K:two")
    with pytest.raises(ValueError) as caught:
        parse_keys("K-without-secret-but-with-a-password")
    assert "password" not in str(caught.value)
