"""Config keys of the fairness and self-healing features: healthCheckInterval,
healthCheckFailures, restart (per model) and routing.scheduler.settings.fifo.maxWait."""

import pytest

from test_config_errors import M, error_of, load


def test_defaults_change_nothing():
    m = load(M).models["m1"]
    assert (m.health_check_interval, m.health_check_failures, m.restart) == (0, 3, "never")


def test_model_keys_as_written():
    cfg = load(M + "    healthCheckInterval: 10\n    healthCheckFailures: 2\n    restart: on-failure\n"
               "  m2:\n    cmd: y ${PORT}\n    healthCheckInterval: 1500ms\n    restart: always\n"
               "  m3:\n    cmd: z ${PORT}\n    healthCheckInterval: 0.25\n")
    m1, m2, m3 = (cfg.models[m] for m in ("m1", "m2", "m3"))
    assert (m1.health_check_interval, m1.health_check_failures, m1.restart) == (10, 2, "on-failure")
    assert (m2.health_check_interval, m2.restart) == (1.5, "always")
    assert (m3.health_check_interval, m3.health_check_failures, m3.restart) == (0.25, 3, "never")


def test_health_check_interval_zero_with_no_endpoint_is_fine():
    m = load(M + "    checkEndpoint: none\n    healthCheckInterval: 0\n").models["m1"]
    assert m.health_check_interval == 0


BAD = {
    "interval negative": ("    healthCheckInterval: -1\n",
                          "models.m1.healthCheckInterval: model m1: healthCheckInterval must be >= 0 (got -1)"),
    "interval negative duration": ("    healthCheckInterval: -5s\n",
                                   "model m1: healthCheckInterval must be >= 0 (got -5)"),
    "interval not a number": ("    healthCheckInterval: often\n",
                              "models.m1.healthCheckInterval: model m1: healthCheckInterval must be a number "
                              "of seconds or a duration such as 30s (got \"often\")"),
    "interval a list": ("    healthCheckInterval: [1]\n", "healthCheckInterval must be a number of seconds "
                                                          "or a duration such as 30s (got a list)"),
    "interval without an endpoint": ("    checkEndpoint: none\n    healthCheckInterval: 5\n",
                                     "models.m1.healthCheckInterval: model m1: healthCheckInterval needs an "
                                     "endpoint to probe, but checkEndpoint is none"),
    "failures zero": ("    healthCheckFailures: 0\n",
                      "models.m1.healthCheckFailures: model m1: healthCheckFailures must be at least 1 (got 0)"),
    "failures negative": ("    healthCheckFailures: -2\n", "model m1: healthCheckFailures must be at least 1 (got -2)"),
    "failures fraction": ("    healthCheckFailures: 2.5\n",
                          "model m1: healthCheckFailures must be a whole number (got \"2.5\")"),
    "failures not a number": ("    healthCheckFailures: many\n",
                              "model m1: healthCheckFailures must be a whole number (got \"many\")"),
    "restart unknown": ("    restart: sometimes\n",
                        "models.m1.restart: model m1: restart must be one of never, on-failure, always "
                        "(got \"sometimes\")"),
    "restart a boolean": ("    restart: true\n",
                          "models.m1.restart: model m1: restart must be one of never, on-failure, always "
                          "(got \"true\")"),
}


@pytest.mark.parametrize("extra, expected", BAD.values(), ids=BAD.keys())
def test_bad_values_name_the_model_and_key(extra, expected):
    assert expected in error_of(M + extra)


def test_max_wait_in_routing_scheduler_fifo():
    fifo = "routing:\n  scheduler:\n    use: fifo\n    settings:\n      fifo:\n        maxWait: {}\n"
    assert load(M).routing.scheduler.fifo.max_wait == 0
    assert load(fifo.format(30) + M).routing.scheduler.fifo.max_wait == 30
    assert load(fifo.format("1m30s") + M).routing.scheduler.fifo.max_wait == 90
    assert load(fifo.format(0.5) + M).routing.scheduler.fifo.max_wait == 0.5
    assert error_of(fifo.format(-1) + M).endswith(
        ":6: routing.scheduler.settings.fifo.maxWait must be >= 0 (got -1)")
    assert ("routing.scheduler.settings.fifo.maxWait must be a number of seconds or a duration such "
            "as 30s (got \"soon\")") in error_of(fifo.format("soon") + M)
