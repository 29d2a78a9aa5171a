"""Probe settings that could only fail or flood are refused at load, with file, line, key path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from runbook.loader import RunbookError, load_runbook


def errors_of(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "probes.yml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    with pytest.raises(RunbookError) as caught:
        load_runbook(path)
    return [str(e) for e in caught.value.errors]


def check(tmp_path: Path, text: str, *expected: tuple[int, str, str]) -> None:
    """Exactly these errors: (line, key path, words of the reason)."""
    got = errors_of(tmp_path, text)
    assert len(got) == len(expected), "\n".join(got)
    for error, (line, key, words) in zip(got, expected, strict=True):
        prefix = f"{tmp_path / 'probes.yml'}:{line}: {key}: "
        assert error.startswith(prefix), f"{error!r} does not start with {prefix!r}"
        assert words in error, error


def test_a_url_without_scheme_is_refused(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        watch:
          http:
            - name: health
              url: "localhost:5000/health"
            - {name: ftp, url: "ftp://files.example.com/health"}
            - {name: nohost, url: "http:///health"}
            - {name: badport, url: "http://h:abc/health"}
            - {name: bigport, url: "http://h:99999/health"}
            - {name: zeroport, url: "http://h:0/health"}
          freshness:
            - {name: beat, http_json: "127.0.0.1:8080/beat", field: t}
        """,
        (5, "watch.http[0].url", "(write http://localhost:5000/health)"),
        (6, "watch.http[1].url", "is not an http:// or https:// URL with a host"),
        (7, "watch.http[2].url", "is not an http:// or https:// URL with a host"),
        (8, "watch.http[3].url", "is not an http:// or https:// URL with a host"),
        (9, "watch.http[4].url", "is not an http:// or https:// URL with a host"),
        (10, "watch.http[5].url", "is not an http:// or https:// URL with a host"),
        (12, "watch.freshness[0].http_json", "(write http://127.0.0.1:8080/beat)"))


def test_zero_timeout_and_interval_are_refused(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        watch:
          http:
            - name: a
              url: http://127.0.0.1:8080/health
              timeout: 0s
            - name: b
              url: http://127.0.0.1:8080/health
              interval: 0s
            - name: c
              url: http://127.0.0.1:8080/health
              interval: 200ms
              timeout: 100ms
        """,
        (6, "watch.http[0].timeout", "leaves a probe no time"),
        (9, "watch.http[1].interval", "shorter than 1s"),
        (12, "watch.http[2].interval", "shorter than 1s"))


def test_a_timeout_longer_than_the_interval_is_refused(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        watch:
          http:
            - name: a
              url: http://127.0.0.1:8080/health
              interval: 10s
              timeout: 40s
        """, (7, "watch.http[0].timeout", "40s is longer than the interval (10s)"))


def test_an_unwritten_timeout_fits_a_short_interval(tmp_path: Path) -> None:
    path = tmp_path / "ok.yml"
    path.write_text("service: api\nwatch:\n  http:\n"
                    "    - {name: quick, url: 'https://api.example.com/health', interval: 2s}\n"
                    "    - {name: usual, url: 'http://[::1]:8080/health'}\n")
    quick, usual = load_runbook(path).runbook.watch.http
    assert (quick.interval, quick.timeout) == (2.0, 2.0)
    assert (usual.interval, usual.timeout) == (15.0, 5.0)


@pytest.mark.filterwarnings("ignore:Possible nested set:FutureWarning")  # re's own, on load
def test_a_log_pattern_with_a_posix_class_is_refused(tmp_path: Path) -> None:
    """Python's re reads [[:digit:]] as a set of [ : d i g t then ]; the regex module the
    exporter matches with reads a POSIX class: refused rather than meaning two things."""
    check(tmp_path, """
        service: api
        watch:
          logs:
            - name: app
              path: /var/log/app.log
              patterns: {code: "status=[[:digit:]]+", fine: "\\\\[:x:\\\\]"}
        """, (6, "watch.logs[0].patterns", "has a POSIX class such as [:alpha:]"))
