"""Settings from the environment: defaults, parsing, and errors that name the variable."""

from __future__ import annotations

import pytest

from sftjob_operator.settings import (
    DEFAULT_METRICS_PORT,
    DEFAULT_PROGRESS_INTERVAL_SECONDS,
    DEFAULT_TRAINER_IMAGE,
    Settings,
    SettingsError,
)


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.watch_namespaces == () and settings.clusterwide
    assert settings.progress_interval_seconds == DEFAULT_PROGRESS_INTERVAL_SECONDS == 30
    assert settings.trainer_image == DEFAULT_TRAINER_IMAGE
    assert settings.default_worker_cpu is None and settings.default_worker_memory is None
    assert settings.metrics_port == DEFAULT_METRICS_PORT == 9102


def test_every_variable() -> None:
    settings = Settings.from_env(
        {
            "SFTJOB_WATCH_NAMESPACES": " ml-team, research ,",
            "SFTJOB_PROGRESS_INTERVAL_SECONDS": "2.5",
            "SFTJOB_TRAINER_IMAGE": "registry.example/trainer:1.2",
            "SFTJOB_DEFAULT_WORKER_CPU": "16",
            "SFTJOB_DEFAULT_WORKER_MEMORY": "128Gi",
            "SFTJOB_METRICS_PORT": "0",
        }
    )
    assert settings.watch_namespaces == ("ml-team", "research") and not settings.clusterwide
    assert settings.progress_interval_seconds == 2.5
    assert settings.trainer_image == "registry.example/trainer:1.2"
    assert (settings.default_worker_cpu, settings.default_worker_memory) == ("16", "128Gi")
    assert settings.metrics_port == 0


def test_empty_values_mean_the_defaults() -> None:
    names = [
        "SFTJOB_WATCH_NAMESPACES",
        "SFTJOB_PROGRESS_INTERVAL_SECONDS",
        "SFTJOB_TRAINER_IMAGE",
        "SFTJOB_METRICS_PORT",
    ]
    assert Settings.from_env(dict.fromkeys(names, "")) == Settings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SFTJOB_WATCH_NAMESPACES", "Bad_Namespace"),
        ("SFTJOB_PROGRESS_INTERVAL_SECONDS", "soon"),
        ("SFTJOB_PROGRESS_INTERVAL_SECONDS", "0"),
        ("SFTJOB_DEFAULT_WORKER_CPU", "500m"),
        ("SFTJOB_DEFAULT_WORKER_MEMORY", "lots"),
        ("SFTJOB_METRICS_PORT", "99999"),
    ],
)
def test_malformed_values_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: value})


def test_the_entry_point_refuses_bad_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sftjob_operator.__main__ import main

    monkeypatch.setenv("SFTJOB_PROGRESS_INTERVAL_SECONDS", "often")
    assert main([]) == 2
    assert "SFTJOB_PROGRESS_INTERVAL_SECONDS" in capsys.readouterr().err
