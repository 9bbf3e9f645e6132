"""What a check found: one row per file or cell, a status, a detail line; printed as a rich table or
JSON, with the exit code a script tests."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Literal

from rich.console import Console
from rich.table import Table

Status = Literal["ok", "warning", "error"]
STYLES = {"ok": "green", "warning": "yellow", "error": "bold red"}


@dataclass
class Finding:
    what: str
    """The kind of thing checked: layout, shard set, chunk, checkpoint, cell, assembly, ..."""
    subject: str
    """The file, folder or cell it concerns."""
    status: Status
    detail: str


@dataclass
class Report:
    path: str
    kind: str
    """dataset, ns-train run, train-cells run, assembled run."""
    findings: List[Finding] = field(default_factory=list)

    def add(self, what: str, subject: Any, status: Status, detail: str) -> Finding:
        finding = Finding(what, str(subject), status, detail)
        self.findings.append(finding)
        return finding

    @property
    def errors(self) -> List[Finding]:
        return [f for f in self.findings if f.status == "error"]

    @property
    def exit_code(self) -> int:
        """0: sound (warnings allowed); 1: something is wrong."""
        return 1 if self.errors else 0

    def as_dict(self) -> Dict[str, Any]:
        counts = {status: sum(f.status == status for f in self.findings) for status in STYLES}
        return {"path": self.path, "kind": self.kind, "sound": not self.errors, "counts": counts,
                "findings": [asdict(f) for f in self.findings]}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=1)

    def print(self, console: Console) -> None:
        table = Table(title=f"async-nerf-check: {self.kind} {self.path}", show_lines=False)
        for column in ("what", "subject", "status", "detail"):
            table.add_column(column, overflow="fold")
        root = self.path.rstrip("/") + "/"
        for f in self.findings:  # paths inside PATH relative to it (the title names PATH): shorter rows
            subject = f.subject[len(root):] if f.subject.startswith(root) else f.subject
            table.add_row(f.what, subject, f"[{STYLES[f.status]}]{f.status}", f.detail)
        console.print(table)
        counts = self.as_dict()["counts"]
        verdict = "[bold red]NOT SOUND" if self.errors else "[green]sound"
        console.print(f"{verdict}[/]: {counts['ok']} ok, {counts['warning']} warnings, {counts['error']} errors")
