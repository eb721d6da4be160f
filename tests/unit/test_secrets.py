"""Secrets given in engine_options never show in reprs or errors."""

from __future__ import annotations

import pytest

from uow import ConfigurationError, Settings

SECRETS = {"password": "pw-1", "sslpassword": "pw-2", "oauth_client_secret": "pw-3"}


def test_settings_repr_masks_secret_connect_args() -> None:
    """libpq's secret parameters in connect_args show as *** in the repr; the others as given."""
    settings = Settings(
        url="postgresql://u@h/db",
        engine_options={"connect_args": {**SECRETS, "sslmode": "require"}, "echo_pool": True},
    )
    shown = repr(settings)
    assert not [value for value in SECRETS.values() if value in shown]
    assert "'password': '***'" in shown and "'sslpassword': '***'" in shown
    assert "'sslmode': 'require'" in shown and "'echo_pool': True" in shown
    assert dict(settings.engine_options["connect_args"]) == {**SECRETS, "sslmode": "require"}


def test_invalid_engine_options_error_does_not_echo_them() -> None:
    """engine_options that are not a mapping are refused without showing what they hold."""
    with pytest.raises(ConfigurationError, match="must be a mapping") as raised:
        Settings(url="postgresql://u@h/db", engine_options=[("connect_args", SECRETS)])  # type: ignore[arg-type]
    assert "pw-1" not in str(raised.value)
