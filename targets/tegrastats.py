"""Lenient parser for NVIDIA Jetson ``tegrastats`` output.

One tegrastats line is one sample. The field set varies by module, L4T release and
whether tegrastats ran as root, so fields are matched by pattern, not by position:

* optional ``MM-DD-YYYY HH:MM:SS`` prefix (``--logfile`` on newer L4T);
* ``RAM used/totalMB (lfb NxSIZE)`` with SIZE in MB or kB - the only required field;
* optional ``SWAP used/totalMB (cached NMB)`` and ``IRAM used/totalkB(lfb NkB)``;
* ``CPU [load%@MHz,...]`` with ``off`` cores (and ``load%`` without frequency);
* ``EMC_FREQ N%`` / ``N%@MHz``; ``GR3D_FREQ N%`` / ``N%@MHz`` / ``N%@[MHz,MHz]`` / ``@MHz``;
* engines ``NVENC off``, ``NVDEC 1100``, ``APE 25``, ``VIC_FREQ 729``, ``MTS fg N% bg N%``;
* thermal zones ``name@TC`` (any case; ``-256C`` = sensor absent -> ``None``; JetPack 7
  prints ``cur/max``);
* power rails ``NAME cur/avg`` with or without ``mW`` (JetPack 7 adds a third value);
  names differ per module and may repeat (``NC`` twice on AGX Orin: kept as ``NC``,
  ``NC_2``).

Lines without a ``RAM`` field (shell prompts, ``[sudo] password`` ...) are skipped.
A text with no parseable line raises :class:`TegrastatsParseError`.

A line is cut into tokens (``_tokens``: the first pattern of ``_TOKEN_RES`` that matches
at each position, or an unparsed word), and a ``_SampleBuilder`` records each token with
the handler for its kind, then builds the :class:`TegraSample`.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Iterator, Sequence

__all__ = [
    "TegrastatsParseError",
    "TegraSample",
    "parse_tegrastats_line",
    "parse_tegrastats",
    "summarize",
    "guess_module",
    "TOTAL_INPUT_RAILS",
]


class TegrastatsParseError(ValueError):
    """The text contains no tegrastats sample."""


# Rails that measure the module's (or board's) input power, in preference order.
TOTAL_INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0")


@dataclass(frozen=True)
class TegraSample:
    """One tegrastats line. Missing fields are ``None`` / empty."""

    ram_used_mb: int
    ram_total_mb: int
    timestamp: str | None = None  # "MM-DD-YYYY HH:MM:SS" as printed
    lfb_blocks: int | None = None  # largest free block: count ...
    lfb_block_kb: float | None = None  # ... x size of one block
    swap_used_mb: int | None = None
    swap_total_mb: int | None = None
    swap_cached_mb: int | None = None
    iram_used_kb: int | None = None
    iram_total_kb: int | None = None
    # one entry per core: (load %, MHz or None), or None when the core is "off"
    cpus: tuple[tuple[int, int | None] | None, ...] = ()
    emc_pct: int | None = None
    emc_mhz: int | None = None
    gpu_pct: int | None = None  # GR3D_FREQ load; None when printed as "@freq" only
    gpu_mhz: tuple[int, ...] = ()  # one value, or one per GPC on Orin ("@[a,b]")
    engines: tuple[tuple[str, int | None], ...] = ()  # (name, MHz/value or None if "off")
    mts_fg_pct: int | None = None
    mts_bg_pct: int | None = None
    temps_c: tuple[tuple[str, float | None], ...] = ()  # -256C sentinel -> None
    rails_mw: tuple[tuple[str, int, int | None], ...] = ()  # (name, current, average)
    unparsed: tuple[str, ...] = ()

    @property
    def n_cores(self) -> int:
        return len(self.cpus)

    @property
    def n_cores_online(self) -> int:
        return sum(1 for c in self.cpus if c is not None)

    @property
    def temps(self) -> dict[str, float | None]:
        return dict(self.temps_c)

    @property
    def rails(self) -> dict[str, int]:
        """Current (instantaneous) power per rail, mW."""
        return {name: cur for name, cur, _ in self.rails_mw}

    @property
    def engine_map(self) -> dict[str, int | None]:
        return dict(self.engines)

    def total_input_power(self) -> tuple[str, int] | None:
        rails = self.rails
        for name in TOTAL_INPUT_RAILS:
            if name in rails:
                return name, rails[name]
        return None


# --------------------------------------------------------------------------- parsing

_TS_RE = re.compile(r"^\s*(?P<ts>\d{2}-\d{2}-\d{4} \d{2}:\d{2}:\d{2})\s+")
_RAM_PROBE_RE = re.compile(r"\bRAM \d+/\d+MB")
_UNIT_KB = {"kB": 1.0, "KB": 1.0, "MB": 1024.0, "GB": 1024.0 * 1024.0}

_TOKEN_RES: list[tuple[str, re.Pattern[str]]] = [
    (
        "ram",
        re.compile(
            r"RAM (?P<used>\d+)/(?P<total>\d+)MB"
            r"(?:\s*\(lfb (?P<n>\d+)x(?P<sz>\d+)(?P<u>kB|KB|MB|GB)\))?"
        ),
    ),
    ("swap", re.compile(r"SWAP (?P<used>\d+)/(?P<total>\d+)MB(?:\s*\(cached (?P<cached>\d+)MB\))?")),
    ("iram", re.compile(r"IRAM (?P<used>\d+)/(?P<total>\d+)kB(?:\s*\(lfb \d+kB\))?")),
    ("cpu", re.compile(r"CPU \[(?P<body>[^\]]*)\]")),
    ("emc", re.compile(r"EMC_FREQ (?:(?P<pct>\d+)%)?(?:@(?P<mhz>\d+))?(?=\s|$)")),
    (
        "gr3d",
        re.compile(r"GR3D_FREQ (?:(?P<pct>\d+)%)?(?:@\[(?P<arr>[\d,\s]*)\]|@(?P<mhz>\d+))?(?=\s|$)"),
    ),
    ("mts", re.compile(r"MTS fg (?P<fg>\d+)% bg (?P<bg>\d+)%")),
    (
        "temp",
        re.compile(r"(?P<name>[A-Za-z]\w*)@(?P<t>-?\d+(?:\.\d+)?)C(?:/-?\d+(?:\.\d+)?C)*(?=\s|$)"),
    ),
    (
        "rail",
        re.compile(
            r"(?P<name>[A-Za-z][\w]*) (?P<cur>\d+)(?:mW)?/(?P<avg>\d+)(?:mW)?(?:/\d+(?:mW)?)*(?=\s|$)"
        ),
    ),
    ("engine", re.compile(r"(?P<name>[A-Z][A-Z0-9_]*) (?:(?P<off>off)|(?:\d+%@)?(?P<val>\d+))(?=\s|$)")),
]
_SENTINEL_C = -256.0


def _match_token(text: str, pos: int) -> tuple[str, re.Match[str]] | None:
    """The first token pattern of :data:`_TOKEN_RES` that matches at ``pos``.

    Args:
        text: The line, without its timestamp.
        pos: Where the token starts (not a space).

    Returns:
        ``(kind, match)``, or ``None`` when no pattern matches there.
    """
    for kind, rx in _TOKEN_RES:
        m = rx.match(text, pos)
        if m:
            return kind, m
    return None


def _tokens(text: str) -> Iterator[tuple[str, dict[str, str | None]]]:
    """Split a line into tokens, left to right.

    Args:
        text: The line, without its timestamp.

    Yields:
        ``(kind, groups)`` per token: a kind of :data:`_TOKEN_RES` with the match's named
        groups, or ``"unparsed"`` with ``{"text": word}`` for a word no pattern matches.
    """
    pos, n = 0, len(text)
    while pos < n:
        if text[pos].isspace():
            pos += 1
            continue
        found = _match_token(text, pos)
        if found is None:
            end = pos
            while end < n and not text[end].isspace():
                end += 1
            yield "unparsed", {"text": text[pos:end]}
            pos = end
            continue
        kind, m = found
        pos = m.end()
        yield kind, m.groupdict()


class _SampleBuilder:
    """Fields of one tegrastats line, collected token by token: one ``_on_<kind>`` method
    per token kind of :data:`_TOKEN_RES` (and ``_on_unparsed``)."""

    def __init__(self, timestamp: str | None) -> None:
        self.fields: dict[str, Any] = {"timestamp": timestamp}
        self.cpus: list[tuple[int, int | None] | None] = []
        self.engines: list[tuple[str, int | None]] = []
        self.temps: list[tuple[str, float | None]] = []
        self.rails: list[tuple[str, int, int | None]] = []
        self.rail_names: dict[str, int] = {}
        self.unparsed: list[str] = []

    def add(self, kind: str, g: dict[str, str | None]) -> None:
        """Record one token.

        Args:
            kind: The token kind, as yielded by :func:`_tokens`.
            g: Its named groups.
        """
        self._HANDLERS[kind](self, g)

    def _on_ram(self, g: dict[str, Any]) -> None:
        """``RAM used/totalMB (lfb NxSIZE)``."""
        self.fields["ram_used_mb"], self.fields["ram_total_mb"] = int(g["used"]), int(g["total"])
        if g["n"]:
            self.fields["lfb_blocks"] = int(g["n"])
            self.fields["lfb_block_kb"] = int(g["sz"]) * _UNIT_KB[g["u"]]

    def _on_swap(self, g: dict[str, Any]) -> None:
        """``SWAP used/totalMB (cached NMB)``."""
        self.fields["swap_used_mb"], self.fields["swap_total_mb"] = int(g["used"]), int(g["total"])
        if g["cached"]:
            self.fields["swap_cached_mb"] = int(g["cached"])

    def _on_iram(self, g: dict[str, Any]) -> None:
        """``IRAM used/totalkB(lfb NkB)``."""
        self.fields["iram_used_kb"], self.fields["iram_total_kb"] = int(g["used"]), int(g["total"])

    def _on_cpu(self, g: dict[str, Any]) -> None:
        """``CPU [load%@MHz,off,load%,...]``."""
        for core in g["body"].split(","):
            core = core.strip()
            cm = re.fullmatch(r"(\d+)%(?:@(\d+))?", core)
            if cm:
                self.cpus.append((int(cm.group(1)), int(cm.group(2)) if cm.group(2) else None))
            elif core:
                self.cpus.append(None)  # "off" (or anything unreadable: treat as offline)

    def _on_emc(self, g: dict[str, Any]) -> None:
        """``EMC_FREQ N%`` / ``N%@MHz``."""
        self.fields["emc_pct"] = int(g["pct"]) if g["pct"] else None
        self.fields["emc_mhz"] = int(g["mhz"]) if g["mhz"] else None

    def _on_gr3d(self, g: dict[str, Any]) -> None:
        """``GR3D_FREQ N%`` / ``N%@MHz`` / ``N%@[MHz,MHz]`` / ``@MHz``."""
        self.fields["gpu_pct"] = int(g["pct"]) if g["pct"] else None
        if g["arr"] is not None:
            self.fields["gpu_mhz"] = tuple(int(x) for x in re.findall(r"\d+", g["arr"]))
        elif g["mhz"]:
            self.fields["gpu_mhz"] = (int(g["mhz"]),)

    def _on_mts(self, g: dict[str, Any]) -> None:
        """``MTS fg N% bg N%``."""
        self.fields["mts_fg_pct"], self.fields["mts_bg_pct"] = int(g["fg"]), int(g["bg"])

    def _on_temp(self, g: dict[str, Any]) -> None:
        """``name@TC`` (``-256C``: sensor absent)."""
        t = float(g["t"])
        self.temps.append((g["name"], None if t <= _SENTINEL_C else t))

    def _on_rail(self, g: dict[str, Any]) -> None:
        """``NAME cur/avg`` power rail; a repeated name gets ``_2``, ``_3``, ..."""
        name = g["name"]
        self.rail_names[name] = self.rail_names.get(name, 0) + 1
        if self.rail_names[name] > 1:
            name = f"{name}_{self.rail_names[name]}"
        self.rails.append((name, int(g["cur"]), int(g["avg"])))

    def _on_engine(self, g: dict[str, Any]) -> None:
        """``NVENC off`` / ``NVDEC 1100`` / ``APE 25`` / ``VIC_FREQ 729``."""
        self.engines.append((g["name"], None if g["off"] else int(g["val"])))

    def _on_unparsed(self, g: dict[str, Any]) -> None:
        """A word no pattern matches: kept in :attr:`TegraSample.unparsed`."""
        self.unparsed.append(g["text"])

    _HANDLERS: ClassVar[dict[str, Callable[[_SampleBuilder, dict[str, Any]], None]]] = {
        "ram": _on_ram,
        "swap": _on_swap,
        "iram": _on_iram,
        "cpu": _on_cpu,
        "emc": _on_emc,
        "gr3d": _on_gr3d,
        "mts": _on_mts,
        "temp": _on_temp,
        "rail": _on_rail,
        "engine": _on_engine,
        "unparsed": _on_unparsed,
    }

    def build(self) -> TegraSample | None:
        """The sample, or ``None`` when no ``RAM`` token was found."""
        if "ram_used_mb" not in self.fields:  # "RAM" was inside some other token
            return None
        return TegraSample(
            cpus=tuple(self.cpus),
            engines=tuple(self.engines),
            temps_c=tuple(self.temps),
            rails_mw=tuple(self.rails),
            unparsed=tuple(self.unparsed),
            **self.fields,
        )


def parse_tegrastats_line(line: str) -> TegraSample | None:
    """Parse one tegrastats line.

    Args:
        line: One line of tegrastats output.

    Returns:
        The sample, or ``None`` when the line has no ``RAM x/yMB`` field.
    """
    if not line or not _RAM_PROBE_RE.search(line):
        return None
    text = line.strip()
    ts = None
    m = _TS_RE.match(text)
    if m:
        ts = m.group("ts")
        text = text[m.end():]
    sample = _SampleBuilder(ts)
    for kind, groups in _tokens(text):
        sample.add(kind, groups)
    return sample.build()


def parse_tegrastats(text: str | bytes) -> list[TegraSample]:
    """Parse a whole tegrastats log; non-sample lines are skipped.

    Raises :class:`TegrastatsParseError` when no line is a tegrastats sample.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    if text is None or not str(text).strip():
        raise TegrastatsParseError("not tegrastats output: the text is empty")
    samples = [s for s in (parse_tegrastats_line(ln) for ln in text.splitlines()) if s is not None]
    if not samples:
        raise TegrastatsParseError(
            "not tegrastats output: no line contains a 'RAM used/totalMB' sample"
        )
    return samples


# --------------------------------------------------------------------------- module guess

# (name, family, RAM total range in MB as reported by tegrastats, CPU core count incl. "off")
_MODULES: tuple[tuple[str, str, int, int, int], ...] = (
    ("Jetson Nano 2GB", "nano", 1700, 2100, 4),
    ("Jetson Nano 4GB", "nano", 3600, 4100, 4),
    ("Jetson TX2 4GB / TX2 NX", "tx2", 3500, 4100, 6),
    ("Jetson TX2 8GB", "tx2", 7500, 8100, 6),
    ("Jetson Xavier NX 8GB", "xavier", 6500, 8000, 6),
    ("Jetson Xavier NX 16GB", "xavier", 14500, 16100, 6),
    ("Jetson AGX Xavier 8GB", "xavier", 7000, 8100, 8),
    ("Jetson AGX Xavier 16GB", "xavier", 14500, 16100, 8),
    ("Jetson AGX Xavier 32GB", "xavier", 29000, 32500, 8),
    ("Jetson AGX Xavier 64GB", "xavier", 58000, 65000, 8),
    ("Jetson Orin Nano 4GB", "orin-nano", 3000, 4000, 6),
    ("Jetson Orin Nano 8GB", "orin-nano", 6800, 8000, 6),
    ("Jetson Orin NX 8GB", "orin-dla", 6800, 8000, 6),
    ("Jetson Orin NX 16GB", "orin-dla", 14500, 16100, 8),
    ("Jetson AGX Orin 32GB", "orin-dla", 29000, 32500, 8),
    ("Jetson AGX Orin 64GB", "orin-dla", 58000, 65000, 12),
)


def _families(sample: TegraSample) -> set[str] | None:
    """Module families consistent with markers in the line, or None if no marker."""
    zones = {name.lower() for name, _ in sample.temps_c}
    rails = set(sample.rails)
    engines = {name.upper() for name, _ in sample.engines}
    if {"bcpu", "mcpu"} & zones:
        return {"tx2"}
    if any(r.startswith("POM_5V_") for r in rails):
        return {"nano"}
    orin = bool({"soc0", "soc1", "soc2", "tj"} & zones) or len(sample.gpu_mhz) > 1
    if not orin and "aux" in zones:
        return {"xavier"}
    if orin:
        has_engine_list = any(e.startswith(("NVDEC", "NVENC", "NVJPG")) for e in engines)
        if has_engine_list:
            # Orin Nano has neither DLA nor NVENC; the others list NVDLA0 even when off.
            has_dla = any(e.startswith("NVDLA") for e in engines)
            return {"orin-dla"} if has_dla else {"orin-nano"}
        return {"orin-nano", "orin-dla"}
    return None


def guess_module(sample: TegraSample) -> str | None:
    """Best guess of the Jetson module from RAM total and core count, narrowed by
    family markers (thermal-zone names, rail names, DLA presence). ``None`` unless
    exactly one candidate remains."""
    cores = sample.n_cores
    cands = [m for m in _MODULES if m[2] <= sample.ram_total_mb <= m[3] and m[4] == cores]
    fams = _families(sample)
    if fams is not None:
        cands = [m for m in cands if m[1] in fams]
    return cands[0][0] if len(cands) == 1 else None


# --------------------------------------------------------------------------- summary


def summarize(samples: Sequence[TegraSample] | Iterable[TegraSample]) -> dict:
    """Aggregate a list of samples.

    Returns ``n``, ``ram_used_mb`` {first, peak, mean}, ``ram_total_mb``,
    ``ram_growth_mb`` (peak - first: growth during the measurement; RAM includes GPU
    allocations on Jetson's unified memory), ``gpu_util_pct`` {mean, max} (None when
    GR3D_FREQ has no load figure), ``cpu_cores``, ``module_guess``,
    ``power_in_mw_mean`` / ``power_in_rail`` (instantaneous readings of the first
    available rail in ``TOTAL_INPUT_RAILS``), and first/last timestamps.
    """
    samples = list(samples)
    if not samples:
        raise TegrastatsParseError("no tegrastats samples to summarize")
    used = [s.ram_used_mb for s in samples]
    gpu = [s.gpu_pct for s in samples if s.gpu_pct is not None]
    first = samples[0]

    rail_name = None
    for name in TOTAL_INPUT_RAILS:
        if any(name in s.rails for s in samples):
            rail_name = name
            break
    power = [s.rails[rail_name] for s in samples if rail_name and rail_name in s.rails]

    guesses = {guess_module(s) for s in samples}
    module = guesses.pop() if len(guesses) == 1 else None

    stamps = [s.timestamp for s in samples if s.timestamp]
    return {
        "n": len(samples),
        "ram_used_mb": {"first": used[0], "peak": max(used), "mean": statistics.fmean(used)},
        "ram_total_mb": max(s.ram_total_mb for s in samples),
        "ram_growth_mb": max(used) - used[0],
        "gpu_util_pct": {"mean": statistics.fmean(gpu), "max": max(gpu)} if gpu else None,
        "cpu_cores": first.n_cores,
        "module_guess": module,
        "power_in_rail": rail_name,
        "power_in_mw_mean": statistics.fmean(power) if power else None,
        "first_timestamp": stamps[0] if stamps else None,
        "last_timestamp": stamps[-1] if stamps else None,
    }
