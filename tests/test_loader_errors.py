"""Broken runbooks: each error names the file, the line, the key path and the reason."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from runbook.loader import LoadedRunbook, RunbookError, load_runbook

# (line, key path, words the reason must hold); the path is "" for file-level errors.
Expected = tuple[int, str, tuple[str, ...]]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broken.yml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str) -> LoadedRunbook:
    return load_runbook(write(tmp_path, text))


def errors_of(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(RunbookError) as caught:
        load_runbook(path)
    assert str(caught.value) == "\n".join(str(e) for e in caught.value.errors)
    return [str(e) for e in caught.value.errors]


def check(tmp_path: Path, text: str, *expected: Expected) -> None:
    """The load fails with exactly these errors, in this order."""
    got = errors_of(tmp_path, text)
    file = str(tmp_path / "broken.yml")
    assert len(got) == len(expected), "\n".join(got)
    for line, (number, path, words) in zip(got, expected, strict=True):
        prefix = f"{file}:{number}: {path}: " if path else f"{file}:{number}: "
        assert line.startswith(prefix), f"{line!r} does not start with {prefix!r}"
        reason = line[len(prefix):]
        for word in words:
            assert word in reason, f"{word!r} not in {reason!r}"


# ------------------------------------------------------------------ types and keys


def test_wrong_type(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        watch:
          http:
            - name: health
              url: http://127.0.0.1:8080/health
              expect_status: ok
        """, (6, "watch.http[0].expect_status", ("valid list", "'ok'")))


def test_wrong_type_of_section(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        respond: {mode: page}
        """, (2, "respond", ("valid list",)))


def test_unknown_key_with_did_you_mean(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        alerts:
          memory_usage:
            warning: 70%
            critcal: 85%
            for: 5m
        """, (5, "alerts.memory_usage.critcal", ("unknown key 'critcal'",
                                                 "did you mean critical?")))


def test_unknown_top_level_key(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        alert:
          memory_usage: {warning: 70%, for: 5m}
        """, (2, "alert", ("unknown key 'alert'", "did you mean alerts?")))


def test_unknown_collector_lists_the_known_ones(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        watch:
          mysql: {}
          htp: []
        """,
          (3, "watch.mysql", ("unknown key 'mysql'", "known keys: app, ",
                              "freshness, host, http, logs, postgres, redis")),
          (4, "watch.htp", ("unknown key 'htp'", "did you mean http?")))


def test_missing_service(tmp_path: Path) -> None:
    check(tmp_path, """
        alerts: {}
        """, (1, "service", ("required key is missing",)))


def test_bad_service_name(tmp_path: Path) -> None:
    check(tmp_path, """
        service: My API
        """, (1, "service", ("pattern", "'My API'")))


# ------------------------------------------------------------------ units


def test_bad_duration(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        alerts:
          memory_usage:
            warning: 70%
            for: 5 minutes
        """, (5, "alerts.memory_usage.for", ("'5 minutes' is not a duration", "5m")))


def test_duration_units_out_of_order(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        respond:
          - match: {severity: critical}
            cooldown: 30m1h
        """, (4, "respond[0].cooldown", ("'30m1h'", "largest first")))


def test_ratio_over_100_percent(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        alerts:
          memory_usage:
            warning: 170%
            for: 5m
        """, (4, "alerts.memory_usage.warning", ("'170%' is over 100%", "ratio")))


def test_ratio_not_a_number(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        alerts:
          disk_usage: {warning: lots, for: 5m}
        """, (3, "alerts.disk_usage.warning", ("'lots' is not a ratio", "70%")))


def test_latency_threshold_is_a_duration(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        alerts:
          latency_p95:
            warning: 500
            critical: 4 s
            for: 5m
        """, (5, "alerts.latency_p95.critical", ("'4 s' is not a duration", "seconds")))


def test_bad_size(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        watch:
          host:
            memory_limit: 4 gigs
        """, (4, "watch.host.memory_limit", ("'4 gigs' is not a size", "3.4GB", "GiB")))


def test_slo_objective_out_of_range(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        slos:
          - {name: availability, objective: 100%}
        """, (3, "slos[0].objective", ("between 0% and 100%", "99.9%")))


# ------------------------------------------------------------------ alerts


def test_tiers_out_of_order_above(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        alerts:
          cpu_usage:
            warning: 90%
            critical: 70%
            for: 5m
        """, (5, "alerts.cpu_usage.critical", ("tiers out of order", "critical (0.7) must be "
                                                "above warning (0.9)")))


def test_tiers_out_of_order_below(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        watch:
          redis:
            - {name: cache, url_env: REDIS_URL}
        alerts:
          cache_hit_rate:
            warning: 50%
            critical: 70%
            for: 5m
        """, (8, "alerts.cache_hit_rate.critical", ("tiers out of order", "`below`",
                                                     "critical (0.7) must be below warning (0.5)")))


def test_three_tiers_out_of_order(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        alerts:
          error_rate:
            medium: 5%
            high: 20%
            critical: 10%
            for: 5m
        """, (6, "alerts.error_rate.critical", ("critical (0.1) must be above high (0.2)",)))


def test_missing_for(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        alerts:
          memory_usage:
            warning: 70%
            critical: 85%
        """, (4, "alerts.memory_usage.warning", ("no `for` duration", "for: 5m")))


def test_unknown_signal(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        alerts:
          memory_usage: {warning: 70%, for: 5m}
          queue_dept: {warning: 10, for: 5m}
        """, (4, "alerts.queue_dept", ("unknown signal 'queue_dept'", "did you mean queue_depth?")))


def test_unknown_signal_named_by_signal_key(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        alerts:
          slow_api:
            signal: latncy_p95
            warning: 1s
            for: 5m
        """, (4, "alerts.slow_api.signal", ("unknown signal 'latncy_p95'",
                                             "did you mean latency_p95?")))


def test_signal_without_its_watch_source(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        alerts:
          queue_depth: {warning: 10, for: 5m}
        """, (3, "alerts.queue_depth", ("queue_depth is measured from queues under a "
                                         "watch.redis target",)))


def test_several_errors_reported_at_once_in_line_order(tmp_path: Path) -> None:
    check(tmp_path, """
        service: API
        alerts:
          memory_usage:
            warning: 70%
            for: 5m
            critical: 60%
          disk_usage: {warning: lots, for: 5m}
        """,
          (1, "service", ("pattern",)),
          (6, "alerts.memory_usage.critical", ("tiers out of order",)),
          (7, "alerts.disk_usage.warning", ("'lots' is not a ratio",)))


# ------------------------------------------------------------------ respond


def test_match_naming_no_defined_alert(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        alerts:
          memory_usage: {warning: 70%, for: 5m}
        respond:
          - match: {alertname: MemoryUsageHihg}
            mode: page
        """, (5, "respond[0].match.alertname", ("no alert in this runbook is named "
                                                 "'MemoryUsageHihg'",
                                                 "did you mean MemoryUsageHigh?")))


def test_match_external_alert_needs_external_true(tmp_path: Path) -> None:
    text = """
        service: api
        respond:
          - match: {alertname: KubePodCrashLooping}
            mode: page@EXTERNAL@
        """
    check(tmp_path, text.replace("@EXTERNAL@", ""),
          (3, "respond[0].match.alertname", ("'KubePodCrashLooping'", "external: true")))
    loaded = load(tmp_path, text.replace("@EXTERNAL@", "\n            external: true"))
    assert loaded.runbook.respond[0].external


def test_matchers_naming_no_defined_alert(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        alerts:
          disk_usage: {warning: 80%, for: 5m}
        respond:
          - matchers: ['alertname="DiskUsgeHigh"', 'severity="warning"']
        """, (5, "respond[0].matchers", ("'DiskUsgeHigh'", "did you mean DiskUsageHigh?")))


def test_bad_matcher(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        respond:
          - matchers: ['alertname=~"(unclosed"']
            external: true
        """, (3, "respond[0].matchers[0]", ("'(unclosed' is not a regular expression",)))


def test_unknown_action_with_did_you_mean(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        alerts:
          memory_usage: {warning: 70%, for: 5m}
        respond:
          - match: {alertname: MemoryUsageHigh}
            mode: auto
            do:
              - exce: [systemctl, restart, api]
        """, (8, "respond[0].do[0]", ("unknown action 'exce'", "did you mean exec?")))


def test_unknown_watch_target_referenced_by_an_action(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        watch:
          redis:
            - name: main
              url_env: REDIS_URL
              queues: {bullmq: [scrape]}
        alerts:
          queue_depth: {warning: 10, for: 5m}
        respond:
          - match: {alertname: QueueDepthHigh}
            mode: auto
            do:
              - bullmq_pause: {redis: mian, queue: scrape}
        """, (13, "respond[0].do[0].bullmq_pause.redis", ("'mian' is not a target defined under "
                                                           "watch.redis", "did you mean main?")))


def test_mode_auto_without_actions(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        alerts:
          memory_usage: {warning: 70%, for: 5m}
        respond:
          - match: {alertname: MemoryUsageHigh}
            mode: auto
        """, (5, "respond[0]", ("mode auto needs at least one action in do",)))


def test_flushdb_without_confirm(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        watch:
          redis:
            - {name: main, url_env: REDIS_URL}
        alerts:
          memory_usage: {warning: 70%, for: 5m}
        respond:
          - match: {alertname: MemoryUsageHigh}
            mode: auto
            do:
              - redis_flushdb: {redis: main}
        """, (11, "respond[0].do[0].redis_flushdb", ("empties the database", "confirm: true")))


def test_exec_argv_shorthand_errors_point_at_the_list(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        respond:
          - match: {severity: critical}
            external: true
            mode: auto
            do:
              - exec: []
              - exec: [ls, 3]
        """,
          (7, "respond[0].do[0].exec", ("at least 1 item",)),
          (8, "respond[0].do[1].exec[1]", ("valid string", "got 3")))


# ------------------------------------------------------------------ secrets


def test_inline_routing_key(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        page:
          critical:
            pagerduty:
              routing_key: abc123
        """, (5, "page.critical.pagerduty.routing_key", (
              "unknown key 'routing_key'", "did you mean routing_key_env?",
              "secrets are never inline")))


def test_inline_slack_webhook(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        page:
          warning:
            - slack: {webhook_url: "https://hooks.slack.com/services/T/B/x"}
        """, (4, "page.warning[0].slack.webhook_url", ("did you mean webhook_url_env?",
                                                        "secrets are never inline")))


def test_password_inside_redis_url(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        watch:
          redis:
            - name: main
              url: rediss://user:hunter2@cache.internal:6380/0
        """, (5, "watch.redis[0].url", ("password written inline", "url_env")))


def test_env_name_holding_a_value(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        watch:
          postgres:
            - name: main
              dsn_env: postgresql://app:secret@db/app
        """, (5, "watch.postgres[0].dsn_env", ("not an environment variable name",
                                                "never written inline")))


# ------------------------------------------------------------------ files and YAML


def test_yaml_syntax_error(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        alerts:
          memory_usage: {warning: 70%, for: 5m
        respond: []
        """, (4, "", ("YAML syntax error", "expected ',' or '}'",
                      "flow mapping started on line 3")))


def test_yaml_tab_indentation(tmp_path: Path) -> None:
    path = tmp_path / "broken.yml"
    path.write_text("service: api\n\talerts: {}\n", encoding="utf-8")
    with pytest.raises(RunbookError) as caught:
        load_runbook(path)
    assert [str(e) for e in caught.value.errors] == [
        f"{path}:2: YAML syntax error: found character '\\t' that cannot start any token"]


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing but a comment\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "broken.yml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RunbookError) as caught:
        load_runbook(path)
    assert [str(e) for e in caught.value.errors] == [
        f"{path}:1: the file is empty (a runbook needs at least `service:`)"]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yml"
    with pytest.raises(RunbookError) as caught:
        load_runbook(path)
    (error,) = caught.value.errors
    assert str(error).startswith(f"{path}:1: cannot read the file")


def test_duplicate_nested_key(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        alerts:
          memory_usage:
            warning: 70%
            warning: 80%
            for: 5m
        """, (5, "alerts.memory_usage.warning", ("duplicate key", "first set on line 4")))


def test_duplicate_top_level_key(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        alerts: {}
        service: web
        """, (3, "service", ("duplicate key", "first set on line 1")))


def test_duplicate_key_in_a_list_item(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        watch:
          http:
            - name: a
              url: http://127.0.0.1:1/health
              url: http://127.0.0.1:2/health
        """, (6, "watch.http[0].url", ("duplicate key", "first set on line 5")))


@pytest.mark.parametrize(("text", "kind"), [("- service: api\n", "list"),
                                             ("just a string\n", "str")])
def test_file_that_is_not_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    path = tmp_path / "broken.yml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RunbookError) as caught:
        load_runbook(path)
    assert [str(e) for e in caught.value.errors] == [
        f"{path}:1: a runbook is a mapping of keys (service:, watch:, alerts:, ...), not {kind}"]


# ------------------------------------------------------------------ watch and maintenance


def test_bad_time_zone(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        maintenance:
          - name: weekly
            weekly: {days: [sun], start: "02:00", end: "04:00"}
            timezone: Mars/Olympus
        """, (5, "maintenance[0].timezone", ("'Mars/Olympus' is not a known time zone",)))


def test_bad_time_of_day(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        maintenance:
          - name: weekly
            weekly: {days: [sun], start: "2:00", end: "04:00"}
        """, (4, "maintenance[0].weekly.start", ("'2:00' is not a time of day", "HH:MM")))


def test_one_off_window_mixing_an_offset_and_a_local_time(tmp_path: Path) -> None:
    # The end without an offset is in the window's time zone: 10:00 Berlin is 08:00Z, before
    # the start at 09:00Z. Compared as instants, not a traceback.
    check(tmp_path, """
        service: api
        maintenance:
          - name: upgrade
            start: 2026-12-01T09:00:00Z
            end: 2026-12-01T10:00:00
            timezone: Europe/Berlin
        """, (3, "maintenance[0]", ("end must be after start",)))


def test_expr_reading_every_services_exporter(tmp_path: Path) -> None:
    # One Prometheus scrapes every service's exporter, and they all publish runbook_pg_up.
    check(tmp_path, """
        service: api
        watch:
          postgres: [{name: main, dsn_env: PG_DSN}]
        alerts:
          db_down:
            expr: runbook_pg_up{target="main"} and on() runbook_pg_up{job="runbook-api"}
            unit: count
            below: true
            critical: 1
            for: 1m
        """, (6, "alerts.db_down.expr", ("selects runbook_pg_up without a job matcher",
                                           'add job="runbook-api"')))


def test_expr_reading_every_services_app_metrics(tmp_path: Path) -> None:
    # Services share http_requests_total: a hand-written expr of the app's metrics needs the
    # app's job as much as the rendered rules do.
    check(tmp_path, """
        service: api
        watch:
          host: null
          app: {job: api, requests_total: http_requests_total, latency_histogram: http_seconds}
        alerts:
          slow_share:
            expr: >-
              sum(rate(http_seconds_bucket{le="1"}[5m]))
              / sum(rate(http_requests_total{job="api"}[5m]))
            unit: ratio
            below: true
            warning: 90%
            for: 5m
        """, (7, "alerts.slow_share.expr", ("selects http_seconds_bucket (watch.app) without a "
                                              "job matcher", 'add job="api"')))


def test_custom_sli_reading_every_services_exporter(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        watch:
          http: [{name: health, url: "http://api/health"}]
        slos:
          - name: availability
            objective: 99.9%
            sli:
              kind: custom
              errors: sum(rate(runbook_probe_requests_total{result="failure"}[5m]))
              total: sum(rate(runbook_probe_requests_total{job=~"runbook-api"}[5m]))
        """, (9, "slos[0].sli.errors", ("selects runbook_probe_requests_total without a job",)))


def test_app_metrics_with_no_job_to_select_them_by(tmp_path: Path) -> None:
    # Other services in the same Prometheus count http_requests_total too: without a job (or
    # targets to scrape under the service's name) the error-rate rule would sum theirs.
    check(tmp_path, """
        service: api
        watch:
          http: [{name: health, url: "http://api/health"}]
          app:
            requests_total: http_requests_total
        alerts:
          error_rate: {critical: 5%, for: 5m}
        """, (4, "watch.app", ("give job", "or targets", "other services' series")))


def test_app_metrics_job_or_targets_each_scope_them(tmp_path: Path) -> None:
    for scope in ("job: api-web", "targets: [\"10.0.0.5:8080\"]"):
        loaded = load(tmp_path, f"""
            service: api
            watch:
              app:
                {scope}
                requests_total: http_requests_total
            alerts:
              error_rate: {{critical: 5%, for: 5m}}
            """)
        assert loaded.runbook.watch.app is not None


def test_app_target_written_as_a_url(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        watch:
          app:
            targets: ["http://10.0.0.5:8080/metrics"]
        """, (4, "watch.app.targets[0]", ("is not HOST:PORT", "without scheme or path")))


def test_alertname_of_the_exporters_own_alert(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        alerts:
          memory_usage: {alertname: RunbookExporterDown, warning: 80%, for: 5m}
        """, (3, "alerts.memory_usage", ("RunbookExporterDown is the rendered rules' own alert",)))


def test_bad_regex_in_log_patterns(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        watch:
          logs:
            - name: app
              path: /var/log/app.log
              patterns:
                error: "([unclosed"
        """, (6, "watch.logs[0].patterns", ("error: '([unclosed' is not a regular expression",)))


@pytest.mark.parametrize(("label", "words"), [
    ("db-name", ("'db-name' is not a Prometheus label name", "letters, digits and _")),
    ("1st", ("'1st' is not a Prometheus label name",)),
    ("target", ("'target' is reserved", "the collector adds it")),
    ("le", ("'le' is reserved", "histogram buckets")),
    ("quantile", ("'quantile' is reserved", "summary quantiles")),
    ("__name__", ("'__name__' is reserved", "starting with __")),
])
def test_custom_query_label_prometheus_would_refuse_or_overwrite(
        tmp_path: Path, label: str, words: tuple[str, ...]) -> None:
    check(tmp_path, f"""
        service: api
        watch:
          postgres:
            - name: main
              dsn_env: DB_DSN
              queries:
                - name: orders
                  sql: SELECT 1 AS n
                  value: n
                  labels:
                    - kind
                    - "{label}"
        """, (12, "watch.postgres[0].queries[0].labels[1]", words))


def test_custom_query_label_listed_twice(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        watch:
          postgres:
            - name: main
              dsn_env: DB_DSN
              queries:
                - {name: orders, sql: SELECT 1 AS n, value: n, labels: [kind, state, kind]}
        """, (7, "watch.postgres[0].queries[0].labels", ("'kind' is listed twice",)))


def test_two_logs_with_one_name(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        watch:
          logs:
            - {name: app, path: /var/log/app.log, patterns: {error: ERROR}}
            - {name: worker, path: /var/log/worker.log, patterns: {error: ERROR}}
            - {name: app, path: /var/log/app-2.log, patterns: {error: ERROR}}
        """, (6, "watch.logs[2].name", ("'app' is also the name of watch.logs[0]",
                                        "must be unique in watch.logs", "one state file")))


def test_two_freshness_checks_with_one_name(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        watch:
          freshness:
            - {name: backup, file: /var/backups/last}
            - name: backup
              file: /var/backups/other
        """, (5, "watch.freshness[1].name", ("'backup' is also the name of watch.freshness[0]",
                                             "duplicate series")))


def test_every_watch_list_needs_unique_names(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        watch:
          http:
            - {name: health, url: "http://127.0.0.1:8080/health"}
            - {name: health, url: "http://127.0.0.1:8081/health"}
          redis:
            - {name: main, url_env: REDIS_URL}
            - {name: main, url_env: OTHER_REDIS_URL}
          postgres:
            - name: db
              dsn_env: DB_DSN
              queries:
                - {name: orders, sql: SELECT 1 AS n, value: n}
                - {name: orders, sql: SELECT 2 AS n, value: n}
            - {name: db, dsn_env: OTHER_DSN}
        """,
          (5, "watch.http[1].name", ("'health' is also the name of watch.http[0]",)),
          (8, "watch.redis[1].name", ("'main' is also the name of watch.redis[0]",)),
          (14, "watch.postgres[0].queries[1].name", (
              "'orders' is also the name of watch.postgres[0].queries[0]",
              "runbook_pg_query_<name>")),
          (15, "watch.postgres[1].name", ("'db' is also the name of watch.postgres[0]",)))


def test_a_mount_listed_twice(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        watch:
          host:
            mounts:
              - /
              - /data
              - /
        """, (7, "watch.host.mounts[2]", ("'/' is also watch.host.mounts[0]",
                                          "listed once")))


def test_freshness_names_unknown_redis_target(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        watch:
          redis:
            - {name: main, url_env: REDIS_URL}
          freshness:
            - {name: nightly, redis_key: "cron:nightly:last", redis: mainn}
        """, (6, "watch.freshness[0].redis", ("'mainn' is not a target defined under watch.redis",
                                               "did you mean main?")))


def test_a_severity_the_rules_fire_at_with_no_receiver(tmp_path: Path) -> None:
    # The rules' own collector alert is a warning: with receivers only for critical and high
    # (and no default), it would be recorded, retried and never reach anyone.
    check(tmp_path, """
        service: api
        alerts:
          memory_usage: {high: 70%, critical: 85%, for: 5m}
        page:
          critical: {slack: {webhook_url_env: SLACK_WEBHOOK_URL}}
          high: {slack: {webhook_url_env: SLACK_WEBHOOK_URL}}
        """, (4, "page", ("no receiver for severity 'warning'", "RunbookCollectorDown",
                          "add page.warning or page.default")))


def test_a_page_step_at_a_severity_with_no_receiver(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        alerts:
          memory_usage: {warning: 70%, critical: 85%, for: 5m}
        respond:
          - match: {alertname: MemoryUsageHigh}
            mode: page
            do: [{page: {severity: high}}]
        page:
          critical: {slack: {webhook_url_env: SLACK_WEBHOOK_URL}}
          warning: {slack: {webhook_url_env: SLACK_WEBHOOK_URL}}
        """, (8, "page", ("no receiver for severity 'high'", "respond[0].do[0]")))


def test_every_severity_received_or_a_default_loads(tmp_path: Path) -> None:
    slack = "{slack: {webhook_url_env: S}}"
    for page in (f"default: {slack}", f"critical: {slack}\n  warning: {slack}"):
        path = tmp_path / "ok.yml"
        path.write_text("service: api\nalerts:\n  memory_usage: {warning: 70%, for: 5m}\n"
                        f"page:\n  {page}\n")
        load_runbook(path)


def test_page_keyed_by_unknown_severity(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        page:
          urgent:
            slack: {webhook_url_env: SLACK_WEBHOOK_URL}
        """, (3, "page.urgent", ("page is keyed by severity", "critical")))


def test_bad_placeholder_in_exec_argv(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        respond:
          - match: {severity: critical}
            external: true
            mode: auto
            do:
              - exec: [echo, "{{ label.x }}"]
              - exec:
                  argv: [echo, "{{ label.x }}"]
        """,
          (7, "respond[0].do[0].exec[1]", ("{{ labels.NAME }}",)),
          (9, "respond[0].do[1].exec.argv[1]", ("{{ labels.NAME }}",)))


def test_cross_checks_are_reported_with_schema_errors_in_one_run(tmp_path: Path) -> None:
    # A schema error (respond[1].cooldown) does not hide the cross-check problems of the
    # well-formed rules around it, reported at their own lines and indexes.
    check(tmp_path, """
        service: demo
        watch:
          redis:
            - {name: main, url: "redis://127.0.0.1:6379/0", queues: {bullmq: [scrape]}}
        alerts:
          queue_depth: {warning: 50, critical: 100, for: 10m}
        respond:
          - match: {alertname: QueueDepthHihg}
            mode: page
          - match: {alertname: QueueDepthHigh}
            mode: auto
            cooldown: 10 minutes
            do: [{bullmq_resume: {redis: main, queue: scrape}}]
          - match: {alertname: QueueDepthHigh}
            mode: auto
            do: [{bullmq_resume: {redis: mian, queue: scrape}}]
        """,
          (8, "respond[0].match.alertname", ("QueueDepthHihg", "did you mean QueueDepthHigh")),
          (12, "respond[1].cooldown", ("10 minutes", "not a duration")),
          (16, "respond[2].do[0].bullmq_resume.redis", ("mian", "did you mean main")))


def test_a_broken_alert_does_not_make_rules_naming_it_look_wrong(tmp_path: Path) -> None:
    # The alert has a schema error; the rule naming it is not reported as naming no alert.
    check(tmp_path, """
        service: demo
        alerts:
          memory_usage: {warning: 70%, critical: 85%, for: 5m, colour: red}
        respond:
          - match: {alertname: MemoryUsageHigh}
            mode: page
        """,
          (3, "alerts.memory_usage.colour", ("unknown key",)))


# ------------------------------------------------------------------ values no rule can use

QUEUES = """
        watch:
          redis:
            - name: main
              url: redis://127.0.0.1:6379/0
              queues: {bullmq: [scrape], celery: [mail], rq: [reports]}"""


@pytest.mark.parametrize(("alert", "words"), [
    ("queue_workers: {critical: 0, for: 2m}",
     ("critical 0 can never be crossed", "never below 0", "threshold above 0")),
    ("memory_usage: {warning: 90%, critical: 100%, for: 5m}",
     ("critical 100% can never be crossed", "at most 100%", "below 100%")),
    ("cache_hit_rate: {warning: 0%, for: 5m}",
     ("warning 0% can never be crossed", "never below 0%", "above 0%")),
])
def test_threshold_no_value_can_cross(tmp_path: Path, alert: str,
                                      words: tuple[str, ...]) -> None:
    # `< 0` or a ratio `> 1` never holds: the alert would never fire, and its generated
    # firing test would be left out without a word.
    key = alert.split(":")[0]
    tier = "warning" if "warning: 0%" in alert else "critical"
    check(tmp_path, f"""
        service: api{QUEUES}
        alerts:
          {alert}
        """, (8, f"alerts.{key}.{tier}", words))


def test_threshold_just_inside_the_range_is_kept(tmp_path: Path) -> None:
    loaded = load(tmp_path, f"""
        service: api{QUEUES}
        alerts:
          queue_workers: {{critical: 1, for: 2m, select: {{kind: bullmq}}}}
          memory_usage: {{critical: 99.9%, for: 5m}}
        """)
    assert [a.tiers[0].threshold for a in loaded.alerts] == [1.0, 0.999]


@pytest.mark.parametrize(("line", "where"), [
    ("warning: .inf", "alerts.queue_depth.warning"),
    ("warning: .nan", "alerts.queue_depth.warning"),
    ("warning: -.inf", "alerts.queue_depth.warning"),
])
def test_infinite_or_nan_threshold(tmp_path: Path, line: str, where: str) -> None:
    check(tmp_path, f"""
        service: api{QUEUES}
        alerts:
          queue_depth:
            {line}
            for: 5m
        """, (9, where, ("finite",)))


def test_nan_duration(tmp_path: Path) -> None:
    check(tmp_path, f"""
        service: api{QUEUES}
        alerts:
          queue_depth:
            warning: 10
            for: .nan
          memory_usage:
            warning: 70%
            critical: {{threshold: 90%, for: .inf}}
            for: 5m
        """,
          (10, "alerts.queue_depth.for", ("nan is not a duration", "finite")),
          (13, "alerts.memory_usage.critical.for", ("inf is not a duration", "finite")))


# ------------------------------------------------------------------ names rendered twice


def test_expr_alert_keyed_like_a_signal_another_alert_uses(tmp_path: Path) -> None:
    # Both would record svc:queue_depth:count: JobsBacklogHigh would read the expr.
    check(tmp_path, f"""
        service: api{QUEUES}
        alerts:
          queue_depth:
            expr: sum(redis_list_length)
            unit: count
            warning: 10
            for: 5m
          jobs_backlog:
            signal: queue_depth
            warning: 100
            for: 5m
        """, (8, "alerts.queue_depth", ("records under the name of signal queue_depth",
                                         "alerts.jobs_backlog", "rename this alert's key")))


def test_expr_alert_keyed_like_a_signal_in_another_unit_is_kept(tmp_path: Path) -> None:
    loaded = load(tmp_path, f"""
        service: api{QUEUES}
        alerts:
          queue_depth: {{expr: sum(x), unit: ratio, warning: 50%, for: 5m}}
          jobs_backlog: {{signal: queue_depth, warning: 100, for: 5m}}
        """)
    assert len(loaded.alerts) == 2


def test_two_slos_with_one_name(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        watch:
          http: [{name: health, url: "http://127.0.0.1:8080/health"}]
        slos:
          - name: availability
            objective: 99.9%
          - name: availability
            objective: 99%
        """, (7, "slos[1].name", ("slos[0] is also named availability", "own name")))


def test_slo_names_with_one_alertname(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        watch:
          http: [{name: health, url: "http://127.0.0.1:8080/health"}]
        slos:
          - {name: api_avail, objective: 99.9%}
          - {name: api__avail, objective: 99%}
        """, (6, "slos[1].name", ("ApiAvailErrorBudgetBurn", "SLO api_avail")))


def test_alertname_taken_by_an_slo(tmp_path: Path) -> None:
    check(tmp_path, """
        service: api
        watch:
          http: [{name: health, url: "http://127.0.0.1:8080/health"}]
        alerts:
          error_rate:
            warning: 5%
            alertname: AvailabilityErrorBudgetBurn
            for: 5m
        slos:
          - {name: availability, objective: 99.9%}
        """, (7, "alerts.error_rate.alertname", (
            "AvailabilityErrorBudgetBurn is the one SLO availability alerts under",
            "choose another alertname")))


# ------------------------------------------------------------------ SLOs measured by probes


def probed_slos(intervals: list[str], *slos: str, app: str = "null") -> str:
    """A runbook probing one endpoint at these intervals, with these SLOs from line 5 on."""
    probes = ", ".join(f'{{name: p{i}, url: "https://edge.example/health", interval: {every}}}'
                       for i, every in enumerate(intervals))
    listed = "".join(f"\n  - {slo}" for slo in slos)
    return f"service: edge\nwatch:\n  http: [{probes}]\n  app: {app}\nslos:{listed}\n"


AVAILABILITY = "{name: availability, objective: 99.9%}"


def test_slo_that_one_failed_probe_would_page_on(tmp_path: Path) -> None:
    # Seed 004's health check every 5 minutes and 99.9% uptime: 1 of the 12 probes in the
    # page tier's 1h is 8.33% > 14.4 x 0.1%, and 1 of 864 in 3d is still over the ticket's 0.1%.
    check(tmp_path, probed_slos(["5m"], AVAILABILITY), (6, "slos[0].objective", (
        "one failed probe would fire its page and ticket burn-rate alerts",
        "the SLI counts the watch.http probes and 1h holds 12 of them, so one is 8.33%, over "
        "the page tier's bound 14.4 x (1 - 99.9%) = 1.44%",
        "even 3d holds only 864: 0.116% > the ticket tier's bound 0.1%",
        "To alert on 99.9%: set watch.http[0].interval to 51s or less, or add a probe of the "
        "same endpoint with interval: 1m1s or less, or lower objective to at most 99.42%, or "
        "measure the SLI from the app's own metrics (watch.app.requests_total)")))


@pytest.mark.parametrize(("accepted", "refused"), [
    # The reason's fixes load; a little beyond them does not.
    ((["51s"], AVAILABILITY), (["52s"], AVAILABILITY)),
    ((["5m", "1m1s"], AVAILABILITY), (["5m", "1m3s"], AVAILABILITY)),
    ((["5m"], "{name: availability, objective: 99.42%}"),
     (["5m"], "{name: availability, objective: 99.43%}")),
    # Every probe of the exporter counts: 72 an hour, one is 1.39% < 1.44%; alone, 1.67%.
    ((["1m", "5m"], AVAILABILITY), (["1m"], AVAILABILITY)),
], ids=["interval", "added-probe", "objective", "all-probes-count"])
def test_slo_measurable_by_its_probes_is_kept(tmp_path: Path, accepted: tuple[list[str], str],
                                             refused: tuple[list[str], str]) -> None:
    assert load(tmp_path, probed_slos(*accepted)).runbook.slos
    check(tmp_path, probed_slos(*refused), (6, "slos[0].objective", ("one failed probe",)))


def test_slo_measured_from_the_apps_metrics_is_not_held_to_the_probes(tmp_path: Path) -> None:
    # The app's request counter measures availability; latency is still the 5m probe's.
    app = "{job: edge, requests_total: http_requests_total}"
    text = probed_slos(["5m"], AVAILABILITY,
                       "{name: fast, objective: 99.9%, sli: {kind: latency, latency: 500ms}}",
                       app=app)
    check(tmp_path, text, (7, "slos[1].objective", (
        "one probe slower than 500ms would fire its page and ticket burn-rate alerts",
        "watch.app.latency_histogram")))
    with_histogram = app.replace("}", ", latency_histogram: http_request_duration_seconds}")
    assert len(load(tmp_path, text.replace(app, with_histogram)).runbook.slos) == 2


def test_a_broken_probe_does_not_make_its_slo_look_unmeasurable(tmp_path: Path) -> None:
    # The 30s probe left out of the cross-check for its inline password would leave the 5m one
    # alone, which cannot measure 99.9%: that refusal is for when the 30s probe is truly gone.
    fast = '{name: p1, url: "https://user:secret@edge.example/health", interval: 30s}'
    text = probed_slos(["5m"], AVAILABILITY).replace("interval: 5m}", "interval: 5m}, " + fast)
    check(tmp_path, text, (3, "watch.http[1].url", ("password written inline",)))
    check(tmp_path, probed_slos(["5m"], AVAILABILITY), (6, "slos[0].objective", (
        "one failed probe would fire",)))


def test_probe_measured_slo_without_probes(tmp_path: Path) -> None:
    check(tmp_path, probed_slos([], AVAILABILITY), (6, "slos[0].objective", (
        "this SLI counts the watch.http probes and this runbook has none",
        "add a watch.http probe with interval: 51s or less",
        "watch.app.requests_total")))


# ------------------------------------------------------------------ labels the rules own


def test_labels_the_rules_set_or_keep_are_reserved(tmp_path: Path) -> None:
    # With target overridden every probe's series got one labelset, which promtool refuses.
    check(tmp_path, """
        service: api
        labels:
          team: web
          target: api
          alertname: Foo
          __meta: x
          queue: q
          job: api
        """,
          (4, "labels.target", ("'target' is reserved", "group by it", "another label name")),
          (5, "labels.alertname", ("'alertname' is reserved", "names the alert")),
          (6, "labels.__meta", ("'__meta' is reserved", "Prometheus' own")),
          (7, "labels.queue", ("'queue' is reserved",)),
          (8, "labels.job", ("'job' is reserved", "scrape job")))


@pytest.mark.parametrize("name", ["kind", "mount", "pattern", "slo", "severity", "service",
                                  "signal", "tier", "instance", "le"])
def test_every_label_the_rules_use_is_reserved(tmp_path: Path, name: str) -> None:
    check(tmp_path, f"""
        service: api
        labels: {{{name}: x}}
        """, (2, f"labels.{name}", (f"'{name}' is reserved",)))


# ------------------------------------------------------------------ errors inside a union


def test_errors_inside_a_long_form_tier(tmp_path: Path) -> None:
    # One error per key, at its own line; not the number/string members' errors, nor the
    # union members' names in the path.
    check(tmp_path, f"""
        service: api{QUEUES}
        alerts:
          queue_depth:
            warning: 50
            critical:
              threshold: 100
              for: 10 m
              fro: 5m
        """,
          (12, "alerts.queue_depth.critical.for", ("'10 m' is not a duration",)),
          (13, "alerts.queue_depth.critical.fro", ("unknown key 'fro'", "did you mean for?")))


def test_a_tier_of_no_accepted_form(tmp_path: Path) -> None:
    check(tmp_path, f"""
        service: api{QUEUES}
        alerts:
          queue_depth:
            for: 5m
            warning: [50]
            critical:
              threshold: {{value: 100}}
        """,
          (10, "alerts.queue_depth.warning", (
              "expected a number or a string or a mapping of threshold, for", "got [50]")),
          (12, "alerts.queue_depth.critical.threshold", (
              "expected a number or a string", "got {'value': 100}")))


# ------------------------------------------------------------------ signals a queue kind lacks


@pytest.mark.parametrize("signal", ["queue_workers", "queue_oldest_age"])
def test_queue_signal_celery_does_not_export(tmp_path: Path, signal: str) -> None:
    tier = "high: 1" if signal == "queue_workers" else "high: 10m"
    check(tmp_path, f"""
        service: api
        watch:
          redis:
            - {{name: main, url: "redis://127.0.0.1:6379/0", queues: {{celery: [celery]}}}}
        alerts:
          {signal}:
            {tier}
            for: 2m
        """, (6, f"alerts.{signal}", ("every queue this alert watches is a Celery queue",
                                      "BullMQ and RQ", "heartbeat", "staleness")))


@pytest.mark.parametrize(("select", "where"), [
    ("{kind: celery}", "alerts.queue_workers.select.kind"),
    ("{queue: mail}", "alerts.queue_workers"),
    ("{target: broker}", "alerts.queue_workers"),
])
def test_queue_signal_selected_down_to_celery(tmp_path: Path, select: str, where: str) -> None:
    check(tmp_path, f"""
        service: api
        watch:
          redis:
            - {{name: main, url: "redis://127.0.0.1:6379/0", queues: {{rq: [reports]}}}}
            - {{name: broker, url: "redis://127.0.0.1:6379/1", queues: {{celery: [mail]}}}}
        alerts:
          queue_workers:
            select: {select}
            high: 1
            for: 2m
        """, (8 if where.endswith("kind") else 7, where, ("Celery",)))


@pytest.mark.parametrize("queues", ["{celery: [mail], rq: [reports]}",
                                    "{celery: [mail], bullmq: [scrape]}",
                                    "{celery: [mail], discover: true}"])
def test_queue_signal_kept_when_a_queue_can_export_it(tmp_path: Path, queues: str) -> None:
    # It still fires for the BullMQ / RQ queues (or those discovery finds).
    loaded = load(tmp_path, f"""
        service: api
        watch:
          redis:
            - {{name: main, url: "redis://127.0.0.1:6379/0", queues: {queues}}}
        alerts:
          queue_workers: {{high: 1, for: 2m}}
          queue_oldest_age: {{high: 10m, for: 2m}}
        """)
    assert [a.key for a in loaded.alerts] == ["queue_workers", "queue_oldest_age"]
