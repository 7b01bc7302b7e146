"""Device fuzz: random BAR0 reads and writes through the client, as a buggy or
hostile guest driver would issue them. The model may end up in any state; the
server must never crash or hang, and must keep answering."""
from __future__ import annotations

import random

import pytest

from emulator.protocol import REGION_ACCESS, Command
from testkit.client import GuestMemory

BAR0 = 0


def declared_offsets(model) -> list[int]:
    if model.name == "hfi1":
        from devmodel.hfi1.chip_registers import CSR_OFFSETS
        return sorted(set(CSR_OFFSETS.values()))
    return sorted(model.regs._regs)


@pytest.mark.parametrize("device,accesses", [("testdev", 20_000), ("hfi1", 100_000)])
def test_random_bar0_accesses_never_crash_or_hang_the_server(serve, device, accesses):
    served = serve(device)
    client = served.client(timeout=10.0)
    memory = GuestMemory(4 << 20)
    client.dma_map(memory, 0x1_0000_0000)  # so that some DMA the model starts lands somewhere
    for vector in range(4):
        client.enable_msix(vector)
    rng = random.Random(f"{device}-20261120")
    offsets = declared_offsets(served.model)
    bar_size = served.function.region_size(BAR0)
    reads = 0
    for _ in range(accesses):
        size = rng.choice((8, 8, 8, 4, 2, 1))
        if rng.random() < 0.7:
            offset = rng.choice(offsets) + rng.randrange(0, 8, size)
        else:
            offset = rng.randrange(0, bar_size, size)
        if rng.random() < 0.5:
            # a value with structure: all ones, a single bit, a small number, or noise
            value = rng.choice([(1 << 8 * size) - 1, 1 << rng.randrange(8 * size), rng.randrange(16),
                                rng.getrandbits(8 * size)])
            client.send(Command.REGION_WRITE, REGION_ACCESS.pack(offset, BAR0, size) + value.to_bytes(size, "little"),
                        no_reply=True)
        else:
            assert len(client.read(BAR0, offset, size)) == size
            reads += 1
    assert served.thread.is_alive()
    client.reset()  # the device still resets and answers after all that
    assert len(client.read(BAR0, 0, 8)) == 8
    print(f"{device}: {accesses} accesses ({reads} reads), undeclared offsets touched: "
          f"{served.model.stats().get('undeclared_csr_accesses', 0)}")
    client.close()
    memory.close()
