"""Model and alias names: what is accepted, what is refused, and that encoding cannot smuggle
a refused name through."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from dlforge.errors import RegistryError
from dlforge.registry.names import validate_name


@pytest.mark.parametrize("name", ["iris", "iris-mlp.v2", "A_1", "0", "x" * 128, "a.b-c_d"])
def test_valid_names_pass_unchanged(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(("raw", "decoded"), [("iris%2Dmlp", "iris-mlp"), ("iris%252Dmlp", "iris-mlp"),
                                              (quote(quote(quote("v1.2"), safe=""), safe=""), "v1.2")])
def test_names_are_url_decoded_until_stable(raw: str, decoded: str) -> None:
    assert validate_name(raw) == decoded


@pytest.mark.parametrize(("raw", "reason"), [
    ("", "it is empty"),
    ("a/b", "it contains a slash"),
    ("a\\b", "it contains a slash"),
    ("a%2Fb", "it contains a slash"),
    ("a%252Fb", "it contains a slash"),  # decoded twice
    ("%2e%2e", "it contains '..'"),
    ("a..b", "it contains '..'"),
    ("iris\n", "it contains a control character"),  # a regex "$" would accept this one
    ("ir\x00is", "it contains a control character"),
    ("ir%00is", "it contains a control character"),
    ("x" * 129, "it is 129 characters long (at most 128)"),
    ("-iris", "it must start with a letter or digit"),
    (".hidden", "it must start with a letter or digit"),
    ("é", "it must start with a letter or digit"),
    ("iris mlp", "it contains ' '"),
    ("iris:1", "it contains ':'"),
    ("irisé", "it contains 'é'"),
    ("a%2525252525252F", "it is still URL-encoded after 5 decodings"),  # "/" encoded 7 times
])
def test_bad_names_say_why_and_what_is_allowed(raw: str, reason: str) -> None:
    with pytest.raises(RegistryError) as err:
        validate_name(raw, kind="alias")
    assert err.value.message.startswith("alias ") and err.value.message.endswith(reason)
    assert err.value.hint == "use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit, with no '..'"


def test_the_error_quotes_the_raw_name_safely() -> None:
    with pytest.raises(RegistryError, match=r"model name 'a\\nb' is not allowed"):
        validate_name("a\nb")
    with pytest.raises(RegistryError, match=r"model name 'x{77}\.\.\.' is not allowed"):
        validate_name("x" * 300)
    with pytest.raises(RegistryError, match="model name must be a string, got int"):
        validate_name(3)  # type: ignore[arg-type]
