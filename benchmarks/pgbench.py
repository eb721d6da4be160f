"""pgbench, the C-level ceiling: the same transactions as custom scripts.

pgbench runs with ``-c clients -j min(clients, 2) -M prepared --log``, one connection
per client (no pool). Its per-transaction log is read back and measured like the
Python variants: transactions completed inside ``[first start + warmup, + duration]``
count, and p50/p99 come from their latencies. pgbench's own tps line is kept too.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .measure import Measurement, summarize

__all__ = ["SCRIPTS", "find_pgbench", "pgbench_version", "run_pgbench", "script"]

# Explicit BEGIN/END, as the Python variants also send BEGIN, the statements and COMMIT;
# without them W1 would be one round trip instead of three.
SCRIPTS = {
    "W1": """\
\\set id random(1, {accounts})
BEGIN;
UPDATE bench_accounts SET balance = balance + 1 WHERE id = :id;
END;
""",
    # b is uniform over the accounts other than a: the Python variants draw two distinct ids.
    "W2": """\
\\set a random(1, {accounts})
\\set b 1 + (:a + random(0, {accounts} - 2)) % {accounts}
BEGIN;
SELECT id, balance FROM bench_accounts WHERE id IN (:a, :b) ORDER BY id FOR UPDATE;
UPDATE bench_accounts SET balance = balance - 1 WHERE id = :a;
UPDATE bench_accounts SET balance = balance + 1 WHERE id = :b;
END;
""",
}

_ABORTED = re.compile(
    r"client \d+ (?:script \d+ )?aborted(?: in command \d+(?: query \d+)?)?: (.*)"
)
_TPS = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)


def script(workload: str, accounts: int) -> str:
    """The pgbench script for ``W1`` or ``W2``."""
    return SCRIPTS[workload].format(accounts=accounts)


def find_pgbench(explicit: Path | None, bin_dir: Path | None) -> Path | None:
    """pgbench: the one given, else the server's bin dir, else the embedded wheel's, else PATH."""
    if explicit is not None:
        return explicit
    if bin_dir is not None and (bin_dir / "pgbench").is_file():
        return bin_dir / "pgbench"
    try:
        from uow.testing import EmbeddedPostgres  # noqa: PLC0415 - optional extra

        probe = EmbeddedPostgres()  # only to learn the bundled bin dir; never started
        try:
            if (probe.bin_dir / "pgbench").is_file():
                return probe.bin_dir / "pgbench"
        finally:
            probe.cleanup()
    except (RuntimeError, ValueError):
        pass
    found = shutil.which("pgbench")
    return Path(found) if found else None


def pgbench_version(pgbench: Path) -> str:
    result = subprocess.run(  # noqa: S603 - an absolute path to pgbench, no shell
        [str(pgbench), "--version"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip()


def run_pgbench(
    pgbench: Path,
    conninfo: str,
    workload: str,
    *,
    accounts: int,
    clients: int,
    warmup: float,
    duration: float,
    application_name: str,
) -> Measurement:
    """Run one pgbench point and measure it from its per-transaction log."""
    # -T takes whole seconds; the second to spare covers connection start-up, which
    # pgbench counts in -T but which precedes the first transaction.
    seconds = math.ceil(warmup + duration) + 1
    # The password goes in PGPASSWORD: other local users can read a process's arguments.
    params = conninfo_to_dict(conninfo)
    password = params.pop("password", None)
    env = {**os.environ, "PGAPPNAME": application_name}
    if password is not None:
        env["PGPASSWORD"] = str(password)
    with tempfile.TemporaryDirectory(prefix="bench-pgbench-") as tmp:
        script_path = Path(tmp) / f"{workload}.sql"
        script_path.write_text(script(workload, accounts))
        args = [
            str(pgbench),
            "--no-vacuum",
            f"--file={script_path}",
            f"--client={clients}",
            f"--jobs={min(clients, 2)}",
            f"--time={seconds}",
            "--protocol=prepared",
            "--log",
            f"--log-prefix={Path(tmp) / 'tx'}",
            make_conninfo(**params),
        ]
        result = subprocess.run(  # noqa: S603 - an absolute path to pgbench, no shell
            args,
            capture_output=True,
            text=True,
            check=False,
            env=env,
            timeout=seconds + 120,
        )
        records, errors = _read_logs(Path(tmp))
    errors.update(_errors_from_output(result.returncode, result.stdout, result.stderr))
    measurement = _measure(records, clients, warmup, duration, errors)
    tps = _TPS.search(result.stdout)
    measurement.extra.update(
        pgbench_reported_tps=float(tps.group(1)) if tps else None,
        pgbench_exit_code=result.returncode,
        pgbench_time_s=seconds,
    )
    return measurement


# (client id, completion time in s since the epoch, latency in s)
_Record = tuple[int, float, float]


def _read_logs(directory: Path) -> tuple[list[_Record], Counter[str]]:
    records: list[_Record] = []
    errors: Counter[str] = Counter()
    for path in sorted(directory.glob("tx.*")):
        for line in path.read_text().splitlines():
            # client_id transaction_no time script_no time_epoch time_us [lag] [retries]
            fields = line.split()
            if len(fields) < 6:
                continue
            if not fields[2].isdigit():  # "failed", "serialization", "deadlock", "skipped"
                errors[f"pgbench: {fields[2]} transaction"] += 1
                continue
            finished = int(fields[4]) + int(fields[5]) / 1e6
            records.append((int(fields[0]), finished, int(fields[2]) / 1e6))
    return records, errors


def _errors_from_output(code: int, stdout: str, stderr: str) -> Counter[str]:
    errors: Counter[str] = Counter()
    for line in stderr.splitlines():
        match = _ABORTED.search(line)
        if match:
            errors[f"pgbench: client aborted: {match.group(1)[:60]}"] += 1
    failed = _FAILED.search(stdout)
    if code != 0 and not errors:
        tail = (stderr.strip().splitlines() or [f"exit code {code}"])[-1]
        errors[f"pgbench exited with {code}: {tail[:80]}"] += 1
    if failed and int(failed.group(1)) and not errors:
        errors["pgbench: failed transactions"] += int(failed.group(1))
    return errors


def _measure(
    records: list[_Record], clients: int, warmup: float, duration: float, errors: Counter[str]
) -> Measurement:
    if not records:
        return summarize([], duration, [0] * clients, errors)
    started = min(finished - latency for _, finished, latency in records)
    opens = started + warmup
    closes = opens + duration
    last = max(finished for _, finished, _ in records)
    # Should pgbench have stopped before the window closed, measure the part it covered.
    closes = min(closes, last)
    inside = [
        (client, latency) for client, finished, latency in records if opens <= finished <= closes
    ]
    per_client = Counter(client for client, _ in inside)
    measurement = summarize(
        [latency for _, latency in inside],
        closes - opens,
        [per_client.get(i, 0) for i in range(clients)],
        errors,
    )
    measurement.extra["window_covered"] = closes - opens >= duration - 0.01
    return measurement
