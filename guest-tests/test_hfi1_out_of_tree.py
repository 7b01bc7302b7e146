"""A driver developer's loop, end to end (issue 16 item 3): hfi1 from
trixie's linux-source-6.12, built out of tree on the host against the guest
kernel's Debian headers (images/provision/module_build.py) with a visible
change, a module parameter that logs a line; `vfnic up --module hfi1.ko`;
the line in both guests' dmesg, both ports Active, verbs traffic between
the guests. Then one .c file touched and rebuilt, timed (the figure the
issue's bring-up loop is about)."""
from __future__ import annotations

import threading
import time

import pytest

from images.provision.kernel_matrix import build_guest_image
from images.provision.module_build import hfi1_source, timed_build_and_rebuild
from testkit.up import UpProcess, assert_nothing_left

pytestmark = pytest.mark.guest

HELLO = "vfnic_hello: an out-of-tree hfi1"
PARAMETER = '''
static bool vfnic_hello = true;
module_param(vfnic_hello, bool, 0444);
MODULE_PARM_DESC(vfnic_hello, "log a line at load (an out-of-tree build's visible change)");

static int __init hfi1_mod_init(void)
{
	int ret;

	if (vfnic_hello)
		pr_info("%s\\n", "''' + HELLO + '''");
'''


def patch_init(source) -> None:
    init = source / "init.c"
    text = init.read_text()
    original = "static int __init hfi1_mod_init(void)\n{\n\tint ret;\n"
    assert original in text
    init.write_text(text.replace(original, PARAMETER.lstrip("\n"), 1))


def test_an_out_of_tree_hfi1_loads_logs_its_line_and_carries_traffic(places, tmp_path, report_figure):
    run_dir, outside = places
    release = build_guest_image("trixie").kernel_version
    source = hfi1_source(tmp_path / "hfi1")
    patch_init(source)
    module, first_build, rebuild = timed_build_and_rebuild(source, "hfi1", release)
    started = time.monotonic()
    up = UpProcess(run_dir, outside, "--guests", "2", "--module", str(module))
    try:
        state = up.wait_for(lambda s: s if s.get("phase") == "ready" else None, 600, "the fabric to be ready")
        to_active = time.monotonic() - started
        report_figure(f"out-of-tree hfi1: first build {first_build:.0f} s, rebuild after touching init.c "
                      f"{rebuild:.0f} s, vfnic up --module to both ports Active {to_active:.0f} s "
                      f"(loop {rebuild + to_active:.0f} s; the issue's target is 60 s)")
        for guest in ("guest0", "guest1"):
            dmesg = up.run("exec", guest, "--", "dmesg | grep vfnic_hello; cat /sys/module/hfi1/parameters/vfnic_hello")
            assert HELLO in dmesg.stdout and dmesg.stdout.strip().endswith("Y"), dmesg
            port = up.run("exec", guest, "--", "cat /sys/class/infiniband/*/ports/1/state")
            assert port.stdout.strip() == "4: ACTIVE", port
        server: dict = {}
        device = "$(ls /sys/class/infiniband)"
        thread = threading.Thread(target=lambda: server.update(result=up.run(
            "exec", "guest1", "--", f"ibv_rc_pingpong -c -n 20 -d {device} -p 18777", timeout=300)))
        thread.start()
        client = None
        for _ in range(60):
            time.sleep(1)
            client = up.run("exec", "guest0", "--", f"ibv_rc_pingpong -c -n 20 -d {device} -p 18777 10.77.0.2",
                            timeout=300)
            if client.returncode == 0 or "Couldn't connect" not in client.stdout + client.stderr:
                break
        thread.join(320)
        assert client is not None and client.returncode == 0, client
        assert server["result"].returncode == 0, server["result"]
        assert "20 iters" in client.stdout + client.stderr
        assert up.run("down").returncode == 0
        assert up.process.wait(60) == 0
        assert_nothing_left(state, run_dir)
    finally:
        up.kill()
