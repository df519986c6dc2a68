"""Tests for targets.tegrastats against real recorded tegrastats output.

Every file in /work/shared/fixtures/tegrastats/ is picked up by the parametrized tests;
the value tests pin numbers read off specific logs by hand.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from targets.tegrastats import (
    TegraSample,
    TegrastatsParseError,
    guess_module,
    parse_tegrastats,
    parse_tegrastats_line,
    summarize,
)

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
TEGRA_DIR = FIXTURES / "tegrastats"
TRT_DIR = FIXTURES / "trtexec"
SKIP_REASON = f"shared fixtures folder {FIXTURES} is absent"

_SAMPLE_LINE = re.compile(r"^(?:\d{2}-\d{2}-\d{4} \d{2}:\d{2}:\d{2} )?RAM \d+/\d+MB")


def _params(directory: Path, pattern: str):
    files = sorted(directory.glob(pattern)) if directory.is_dir() else []
    if not files:
        return [pytest.param(None, marks=pytest.mark.skip(reason=SKIP_REASON), id="no-fixtures")]
    return [pytest.param(p, id=p.name) for p in files]


def _samples(name: str) -> list[TegraSample]:
    path = TEGRA_DIR / name
    if not path.is_file():
        pytest.skip(f"fixture {path} is absent ({SKIP_REASON})")
    return parse_tegrastats(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- every file


@pytest.mark.parametrize("path", _params(TEGRA_DIR, "*.log"))
def test_every_file_parses_every_sample_completely(path):
    text = path.read_text(encoding="utf-8")
    expected = [ln for ln in text.splitlines() if _SAMPLE_LINE.match(ln.strip())]
    samples = parse_tegrastats(text)
    assert len(samples) == len(expected) > 0
    for line, s in zip(expected, samples):
        assert 0 < s.ram_used_mb <= s.ram_total_mb
        assert s.n_cores >= 4 and s.n_cores_online >= 1
        assert s.unparsed == (), f"unrecognised tokens {s.unparsed} in {line[:80]}"
        assert (s.timestamp is not None) == line[0].isdigit()
        assert all(0 <= load <= 100 for c in s.cpus if c for load in (c[0],))
        assert s.gpu_pct is None or 0 <= s.gpu_pct <= 100
        assert s.rails_mw, "every fixture has power rails"
        assert all(t is None or -40 < t < 150 for _, t in s.temps_c)


@pytest.mark.parametrize("path", _params(TEGRA_DIR, "*.log"))
def test_every_file_summarizes(path):
    samples = parse_tegrastats(path.read_text(encoding="utf-8"))
    s = summarize(samples)
    assert s["n"] == len(samples)
    used = [x.ram_used_mb for x in samples]
    assert s["ram_used_mb"]["first"] == used[0]
    assert s["ram_used_mb"]["peak"] == max(used)
    assert s["ram_growth_mb"] == max(used) - used[0] >= 0
    assert s["ram_total_mb"] == samples[0].ram_total_mb
    # every fixture is from a known module; the guess must be a Jetson or refuse
    assert s["module_guess"] is None or s["module_guess"].startswith("Jetson ")


# --------------------------------------------------------------------------- per-file values


def test_xavier_nx_burn_log():
    ss = _samples("tegrastats-xaviernx-likely-l4t35-deepstream6.3-cpu-gpu-burn.log")
    assert len(ss) == 103
    first = ss[0]
    assert first.timestamp == "10-01-2025 20:05:55"
    assert (first.ram_used_mb, first.ram_total_mb) == (2274, 6834)
    assert (first.lfb_blocks, first.lfb_block_kb) == (27, 4096)
    assert (first.swap_used_mb, first.swap_total_mb, first.swap_cached_mb) == (542, 3417, 2)
    assert first.cpus == ((99, 1189), (100, 1188), (100, 1189), (98, 1189), None, None)
    assert (first.emc_pct, first.emc_mhz) == (0, None)  # "EMC_FREQ 0%" without @freq
    assert (first.gpu_pct, first.gpu_mhz) == (22, ())  # "GR3D_FREQ 22%"
    assert first.temps["AUX"] == 36.5 and first.temps["thermal"] == 37.85
    assert first.rails_mw[0] == ("VDD_IN", 5542, 5542)
    assert (ss[9].lfb_blocks, ss[9].lfb_block_kb) == (2, 128)  # "(lfb 2x128kB)"
    s = summarize(ss)
    assert s["ram_used_mb"]["peak"] == 5507
    assert s["ram_growth_mb"] == 5507 - 2274
    assert s["gpu_util_pct"]["max"] == 99
    assert s["gpu_util_pct"]["mean"] == pytest.approx(89.0874, abs=1e-4)
    assert s["power_in_rail"] == "VDD_IN"
    assert s["power_in_mw_mean"] == pytest.approx(12791.7767, abs=1e-3)
    assert s["module_guess"] == "Jetson Xavier NX 8GB"
    assert s["first_timestamp"] == "10-01-2025 20:05:55"
    assert s["last_timestamp"] == "10-01-2025 20:07:40"


def test_nano_iram_pom_rails_without_mw():
    ss = _samples("tegrastats-nano-4gb-sudo-iram-pom-rails.log")
    assert len(ss) == 114
    first = ss[0]
    assert first.timestamp is None
    assert (first.iram_used_kb, first.iram_total_kb) == (0, 252)
    assert (first.emc_pct, first.emc_mhz) == (0, 204)
    assert (first.gpu_pct, first.gpu_mhz) == (0, (76,))
    assert first.engine_map == {"APE": 25}
    assert first.rails == {"POM_5V_IN": 920, "POM_5V_GPU": 0, "POM_5V_CPU": 119}
    assert ss[1].rails_mw[0] == ("POM_5V_IN", 1537, 1228)  # cur/avg, bare numbers
    s = summarize(ss)
    assert s["ram_used_mb"] == {"first": 936, "peak": 1762, "mean": pytest.approx(1665.7193, abs=1e-3)}
    assert s["ram_total_mb"] == 3964
    assert s["power_in_rail"] == "POM_5V_IN"
    assert s["power_in_mw_mean"] == pytest.approx(4436.7368, abs=1e-3)
    assert s["gpu_util_pct"]["max"] == 99
    assert s["module_guess"] == "Jetson Nano 4GB"


def test_agx_orin_per_gpc_array_and_off_engines():
    ss = _samples("tegrastats-agx-orin-64gb-timestamped.log")
    assert len(ss) == 15
    first = ss[0]
    assert (first.gpu_pct, first.gpu_mhz) == (39, (305, 0))  # "GR3D_FREQ 39%@[305,0]"
    assert first.n_cores == 12 and first.n_cores_online == 8
    assert first.engine_map["NVDLA0"] is None and first.engine_map["APE"] == 174
    assert set(first.engine_map) >= {"NVENC", "NVDEC", "NVJPG", "NVJPG1", "VIC", "OFA", "PVA0_FREQ"}
    assert first.temps["tj"] == 43.906
    assert first.rails == {"VDD_GPU_SOC": 2798, "VDD_CPU_CV": 799, "VIN_SYS_5V0": 3315}
    s = summarize(ss)
    assert s["gpu_util_pct"]["max"] == 41
    assert s["gpu_util_pct"]["mean"] == pytest.approx(25.6667, abs=1e-4)
    assert s["ram_used_mb"]["peak"] == 17958 and s["ram_growth_mb"] == 5
    assert s["power_in_rail"] == "VIN_SYS_5V0"
    assert s["power_in_mw_mean"] == pytest.approx(3060.6)
    assert s["module_guess"] == "Jetson AGX Orin 64GB"


def test_agx_orin_exporter_line_sentinel_and_duplicate_nc():
    (s,) = _samples("tegrastats-agx-orin-64gb-jp5-style-issue-jetson-exporter14.log")
    assert s.temps["CV0"] is None and s.temps["GPU"] is None  # -256C = no sensor
    assert s.temps["CPU"] == 44.562 and s.temps["tj"] == 44.343
    assert s.gpu_mhz == (0, 0)
    assert s.engine_map == {"VIC_FREQ": 729, "APE": 174}
    names = [r[0] for r in s.rails_mw]
    assert names == ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "NC", "VDDQ_VDD2_1V8AO", "NC_2"]
    assert guess_module(s) == "Jetson AGX Orin 64GB"


def test_agx_orin_jp72_three_value_rails_and_cur_max_temps():
    (s,) = _samples("tegrastats-agx-orin-jp7.2-l4t39.2-jtop-test-line.log")
    assert s.swap_total_mb is None
    assert (s.lfb_blocks, s.lfb_block_kb) == (1, 2048)
    assert s.temps["cpu"] == 52.968
    assert s.rails_mw[0] == ("VDD_GPU_SOC", 5139, 5139)
    assert (s.gpu_pct, s.gpu_mhz) == (12, (1300, 1300))
    assert "NVENC0" in s.engine_map and "NVDLA1" in s.engine_map
    assert guess_module(s) == "Jetson AGX Orin 64GB"


def test_agx_xavier_jp42_bare_rail_names():
    (s,) = _samples("tegrastats-agx-xavier-jp4.2-issue-gtop7.log")
    assert (s.ram_used_mb, s.ram_total_mb) == (14700, 15692)
    assert s.n_cores == 8
    assert (s.gpu_pct, s.gpu_mhz) == (0, ())
    assert s.rails == {"GPU": 463, "CPU": 618, "SOC": 2936, "CV": 0, "VDDRQ": 309, "SYS5V": 3306}
    assert s.temps["PMIC"] == 100.0
    assert s.total_input_power() is None  # no VDD_IN / POM_5V_IN / VIN_SYS_5V0 on this BSP
    summary = summarize([s])
    assert summary["power_in_mw_mean"] is None and summary["power_in_rail"] is None
    assert summary["module_guess"] == "Jetson AGX Xavier 16GB"


def test_orin_nano_100ms_window():
    ss = _samples("tegrastats-orin-nano-8gb-jp6.2-l4t36.4.7-100ms-window.log")
    assert len(ss) == 80
    assert ss[0].gpu_mhz == (1018,)  # single-element "@[1018]"
    assert ss[0].swap_used_mb is None
    assert ss[21].gpu_pct == 4 and ss[21].gpu_mhz == (1016,)
    assert sum(1 for x in ss if x.timestamp == "04-19-2026 01:31:33") > 1  # 100 ms interval
    s = summarize(ss)
    assert s["ram_used_mb"]["first"] == 2524 and s["ram_used_mb"]["peak"] == 3753
    assert s["gpu_util_pct"] == {"mean": pytest.approx(0.5), "max": 4}
    assert s["power_in_mw_mean"] == pytest.approx(6406.7125)
    assert s["module_guess"] == "Jetson Orin Nano 8GB"  # no NVENC / NVDLA in the engine list


def test_tx2_head_no_swap_no_gpu_field():
    ss = _samples("tegrastats-tx2-8gb-head60.log")
    assert len(ss) == 60
    assert all(x.gpu_pct is None and x.emc_pct is None and x.swap_total_mb is None for x in ss)
    assert ss[0].temps["BCPU"] == 35.0
    assert ss[0].rails["VDD_DDR"] == 881
    s = summarize(ss)
    assert s["gpu_util_pct"] is None
    assert s["power_in_mw_mean"] == pytest.approx(3621.1833, abs=1e-3)
    assert s["module_guess"] == "Jetson TX2 8GB"


def test_tx2_prompt_lines_skipped_and_gr3d_without_percent():
    ss = _samples("tegrastats-tx2-l4t28.2.1-sudo-vdd-sys-rails-with-prompt.log")
    assert len(ss) == 2  # prompt, "[sudo] password" and the empty last line are skipped
    s = ss[0]
    assert s.cpus[1] is None and s.cpus[2] is None  # Denver cores "off"
    assert s.n_cores == 6 and s.n_cores_online == 4
    assert (s.gpu_pct, s.gpu_mhz) == (None, (0,))  # "GR3D_FREQ @0"
    assert s.rails["VDD_SYS_GPU"] == 192 and s.rails["VDD_IN"] == 3566
    assert summarize(ss)["ram_growth_mb"] == 4


def test_tx2_mts_fields():
    ss = _samples("tegrastats-tx2-sudo-mts-issue-realtime-od24.log")
    assert len(ss) == 3
    assert (ss[0].mts_fg_pct, ss[0].mts_bg_pct) == (1, 8)
    assert ss[0].cpus[1] == (0, 345)
    assert (ss[1].emc_pct, ss[1].emc_mhz) == (16, 102)
    assert ss[0].gpu_mhz == (140,)


# --------------------------------------------------------------------------- module guess


def test_module_guess_refuses_when_ambiguous():
    # 7.6 GB and 6 cores fit Orin Nano 8GB, Orin NX 8GB, Xavier NX 8GB and TX2 8GB
    s = parse_tegrastats_line("RAM 2000/7607MB CPU [1%@1000,1%@1000,1%@1000,1%@1000,1%@1000,1%@1000]")
    assert s is not None
    assert guess_module(s) is None
    assert summarize([s])["module_guess"] is None


def test_module_guess_unknown_ram_size():
    s = parse_tegrastats_line("RAM 100/1000MB CPU [1%@1000,1%@1000]")
    assert guess_module(s) is None


# --------------------------------------------------------------------------- leniency and errors


def test_garbage_and_prompt_lines_are_skipped():
    text = (
        "user@jetson:~$ tegrastats --interval 1000\n"
        "some garbage ### 12/34\n"
        "RAM 1000/3964MB (lfb 10x4MB) CPU [5%@1479,off,off,off] GR3D_FREQ 7%@921 WEIRD_NEW_FIELD ~~ VDD_IN 1000/1000\n"
        "^C\n"
    )
    (s,) = parse_tegrastats(text)
    assert s.ram_used_mb == 1000 and s.gpu_pct == 7 and s.gpu_mhz == (921,)
    assert s.rails == {"VDD_IN": 1000}
    assert "~~" in s.unparsed  # unknown tokens are recorded, not fatal


@pytest.mark.parametrize("line", ["", "hello", "[sudo] password for nvidia:", "RAM is full", "CPU [1%@100]"])
def test_non_sample_line_is_none(line):
    assert parse_tegrastats_line(line) is None


@pytest.mark.parametrize("text", ["", "  \n", "garbage\nmore garbage\n", "nvidia@linux:~$ sudo tegrastats\n"])
def test_no_sample_raises(text):
    with pytest.raises(TegrastatsParseError) as exc:
        parse_tegrastats(text)
    assert str(exc.value).startswith("not tegrastats output") and "\n" not in str(exc.value)


@pytest.mark.parametrize("path", _params(TRT_DIR, "*.log"))
def test_trtexec_log_is_not_tegrastats(path):
    with pytest.raises(TegrastatsParseError, match="not tegrastats output"):
        parse_tegrastats(path.read_text(encoding="utf-8", errors="replace"))


def test_summarize_empty_raises():
    with pytest.raises(TegrastatsParseError):
        summarize([])
    assert issubclass(TegrastatsParseError, ValueError)
