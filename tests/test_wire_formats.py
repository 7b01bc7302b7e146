"""Wire formats: each declaration builds golden bytes, parses them back, and its
derived fast codec agrees. Golden values are written with the shifts of the
kernel's own headers (ib_hdrs.h, hfi.h, chip.h, sdma.h, common.h), so a
field in the wrong place fails here, not in a guest."""
from __future__ import annotations

import pytest

from devmodel.hfi1 import formats as f
from devmodel.wire import cable as w
from devmodel.wire import opa

LE = "little"

GOLDEN = [
    # -- OPA 9B headers (big-endian) -----------------------------------------------------
    ("LRH", opa.Lrh, opa.LRH, dict(sc=0xF, lver=0, sl=0, lnh=2, dlid=0xFFFF, pkt_len=0x21, slid=0x0001),
     "f002ffff00210001"),
    ("BTH", opa.Bth, opa.BTH, dict(opcode=0x64, se=0, migreq=0, pad=2, tver=0, pkey=0xFFFF, fecn=1, becn=0,
                                   dest_qp=0x000012, ack_req=1, psn=7),
     "6420ffff" "80000012" "80000007"),
    ("DETH", opa.Deth, opa.DETH, dict(qkey=0x80010000, entropy=0x5A, src_qp=0x000001), "80010000" "5a000001"),
    ("AETH", opa.Aeth, opa.AETH, dict(syndrome=0x1F, msn=0x000102), "1f000102"),
    ("RETH", opa.Reth, None, dict(vaddr=0x00007F0012345678, rkey=0x1234, length=65536),
     "00007f0012345678" "00001234" "00010000"),
    ("AtomicETH", opa.AtomicEth, None, dict(vaddr=0x1000, rkey=2, swap_data=3, compare_data=4),
     "0000000000001000" "00000002" "0000000000000003" "0000000000000004"),
    ("AtomicAckETH", opa.AtomicAckEth, None, dict(orig_remote_data=0x1122334455667788), "1122334455667788"),
    ("ImmDt", opa.ImmDt, None, dict(imm_data=0xDEADBEEF), "deadbeef"),
    ("IETH", opa.Ieth, None, dict(rkey=0x00C0FFEE), "00c0ffee"),
    # KDETH: little-endian words; offset 0x10, OM, TID 5, TIDCtrl 1, SH, KVer 1 | J_Key 0x1234
    ("KDETH0", opa.KdethWord0, opa.KDETH0, dict(kver=1, sh=1, intr=0, tid_ctrl=1, tid=5, om=1, offset=0x10),
     (0x10 | 1 << 15 | 5 << 16 | 1 << 26 | 1 << 29 | 1 << 30).to_bytes(4, LE).hex()),
    ("KDETH1", opa.KdethWord1, opa.KDETH1, dict(hcrc=0, jkey=0x1234), (0x1234).to_bytes(4, LE).hex()),
    # 16B LRH, hfi1_make_16b_hdr: SLID 1, DLID 2, 5 flits, L2 2, L4 IB local, PKey 0x8001, entropy 0x1234
    ("LRH16B", opa.Lrh16B, opa.LRH_16B, dict(age=0, entropy=0x1234, pkey=0x8001, dlid_high=0, slid_high=0, l4=9, l2=2,
                                             fecn=0, rc=0, sc=3, dlid_low=2, becn=0, len_flits=5, slid_low=1),
     ((1 | 5 << 20) | (2 | 3 << 20 | 2 << 29) << 32 | (9 | 0x8001 << 16) << 64 | 0x1234 << 96).to_bytes(16, LE).hex()),
    ("MAD header", opa.MadHeader, None, dict(base_version=0x80, mgmt_class=0x81, class_version=0x80, method=1,
                                             status=0, class_specific=0x0001, tid=0x42, attr_id=0x0011, attr_mod=0),
     "80818001" "0000" "0001" "0000000000000042" "0011" "0000" "00000000"),
    # -- hfi1 host words (little-endian u64) ------------------------------------------------
    ("PBC", f.Pbc, f.PBC, dict(static_rate_count=0, intr=0, dc_info=1, test_ebp=0, packet_bypass=0, insert_hcrc=2,
                               credit_return=0, insert_bypass_icrc=0, test_bad_icrc=0, fecn=0, vl=3, length_dws=34),
     (34 | 3 << 12 | 2 << 26 | 1 << 30).to_bytes(8, LE).hex()),
    ("SDMA descriptor qw0", f.SdmaDescriptor0, f.SDMA_DESC0, dict(first=1, last=0, byte_count=36, address=0x100002000),
     (1 << 63 | 36 << 48 | 0x100002000).to_bytes(8, LE).hex()),
    ("SDMA descriptor qw1", f.SdmaDescriptor1, f.SDMA_DESC1, dict(ahg_update=0, ahg_mode=0, ahg_index=0,
                                                                  ahg_header_dws=0, generation=2, int_req=0,
                                                                  head_to_host=1),
     (2 << 2 | 1).to_bytes(8, LE).hex()),
    ("RHF", f.Rhf, f.RHF, dict(icrc_err=0, ecc_err=0, len_err=0, tid_err=0, rcv_type_err=0, dc_err=0, dc_unc_err=0,
                               khdr_len_err=0, hdrq_offset=23, egr_offset=2, rcv_seq=5, dc_info=0, egr_index=3,
                               use_egr_buf=1, rcv_type=2, pkt_len=33),
     (33 | 2 << 12 | 1 << 15 | 3 << 16 | 5 << 28 | 2 << 32 | 23 << 44).to_bytes(8, LE).hex()),
    ("credit return", f.CreditReturn, f.CREDIT_RETURN, dict(due_to_force=1, due_to_error=0, due_to_threshold=0,
                                                            due_to_pbc=0, status=1, counter=0x123),
     (0x123 | 1 << 11 | 1 << 15).to_bytes(8, LE).hex()),
    ("RcvArray entry", f.RcvArrayEntry, f.RCV_ARRAY_ENTRY, dict(write_enable=1, size_code=7, address_4k=0x100400),
     (1 << 63 | 7 << 36 | 0x100400).to_bytes(8, LE).hex()),
    # -- a firmware file's CSS header (firmware.c struct css_header, u32 LE): a 64-byte payload
    ("CSS header", f.CssHeader, None, dict(module_type=6, header_len=0xA1, header_version=0x10000, module_id=4,
                                           module_vendor=0x8086, date=0x20261130, size=(644 + 64) // 4,
                                           key_size=64, modulus_size=64, exponent_size=1),
     "06000000" "a1000000" "00000100" "04000000" "86800000" "30112620" "b1000000" "40000000" "40000000" "01000000"
     + "00" * 88),
]


@pytest.mark.parametrize("name,declaration,codec,value,golden", GOLDEN, ids=[g[0] for g in GOLDEN])
def test_declaration_builds_golden_bytes_and_parses_them_back(name, declaration, codec, value, golden):
    data = bytes.fromhex(golden)
    assert declaration.build(value) == data
    parsed = declaration.parse(data)
    assert {k: parsed[k] for k in value} == value
    assert declaration.sizeof() == len(data)
    if codec is not None:
        assert codec.build(**value) == data, "the fast codec builds what construct builds"
        assert codec.parse(data) == value
        assert codec.size == len(data)


def test_kdeth_as_two_words_is_eight_bytes():
    assert opa.Kdeth.sizeof() == 8


def test_the_header_split_follows_the_drivers_table():
    """verbs.c hdr_len_by_opcode: where the chip cuts a 9B packet."""
    table = opa.HEADER_BYTES_BY_OPCODE
    assert table[opa.Opcode.UD_SEND_ONLY] == 28 and table[opa.Opcode.UD_SEND_ONLY_IMM] == 32
    assert table[opa.Opcode.RC + opa.Opcode.SEND_ONLY] == 20 and table[opa.Opcode.RC_ACK] == 24
    assert table[opa.Opcode.RC + opa.Opcode.WRITE_ONLY] == 36 and table[opa.Opcode.RC + opa.Opcode.WRITE_ONLY_IMM] == 40
    assert table[opa.Opcode.RC + opa.Opcode.ATOMIC_ACK] == 32 and table[opa.Opcode.RC + opa.Opcode.CMP_SWAP] == 48
    assert table[opa.Opcode.UC + opa.Opcode.READ_REQUEST] == 0, "UC has no reads"
    assert opa.KDETH_HEADER_BYTES == 56


def test_icrc_detects_a_flipped_bit_but_not_a_rewritten_service_channel():
    packet = bytes.fromhex("0002ffff000b0001" "6400ffff00000012" "00000007" "800100000000000001") + bytes(3)
    packet = packet[:44]
    sealed = opa.append_icrc(packet)
    assert opa.icrc_ok(sealed)
    corrupted = bytearray(sealed)
    corrupted[30] ^= 0x10
    assert not opa.icrc_ok(bytes(corrupted))
    rewritten = bytearray(sealed)
    rewritten[0] = 0xF0 | rewritten[0] & 0x0F  # a switch may change the SC (VL field): invariant
    rewritten[12] |= 0xC0  # and the FECN/BECN bits
    assert opa.icrc_ok(bytes(rewritten))


@pytest.mark.parametrize("lnh,headers", [(opa.LNH_BTH, 0), (opa.LNH_GRH, opa.GRH_BYTES), (opa.LNH_GRH, 20)])
def test_the_icrc_of_a_view_is_the_icrc_of_the_bytes(lnh, headers):
    """The egress path hands `icrc` a memoryview of the launched frame: a
    GRH (whole, or cut short) must not need bytes' own methods."""
    packet = opa.LRH.build(sc=0, lnh=lnh, dlid=1, slid=2, pkt_len=20) + bytes(range(headers)) + bytes(range(30))
    assert opa.icrc(memoryview(packet)) == opa.icrc(packet)


def test_a_bitfields_codec_refuses_values_that_do_not_fit():
    with pytest.raises(ValueError, match="does not fit"):
        opa.LRH.encode(sc=16)


# -- the remote cable's stream (devmodel/wire/cable.py): big-endian frames ------------------------

CABLE_FRAMES = [
    ("HELLO", dict(type=w.FrameType.HELLO, flags=0, payload=dict(version=1, credits=256, name="hfi1")),
     "01" "00" "0011" "56464e494343424c" "0001" "0100" "04" "68666931"),
    ("POLLING", dict(type=w.FrameType.POLLING, flags=0, payload=dict(
        guid=0x0011750000000001, node_type=0, port_no=1, device_id=0x24F0, device_rev=0x11, flags=7,
        verify_cap_phy=0x1234, verify_cap_fabric=0x5678, verify_cap_link_width=0x0002000F)),
     "02" "00" "001a" "0011750000000001" "00" "01" "24f0" "11" "07" "00001234" "00005678" "0002000f"),
    ("OFFLINE", dict(type=w.FrameType.OFFLINE, flags=0, payload=dict(reason=2)), "03" "00" "0001" "02"),
    ("TAKEN_DOWN", dict(type=w.FrameType.TAKEN_DOWN, flags=0, payload=None), "04" "00" "0000"),
    ("BROUGHT_UP", dict(type=w.FrameType.BROUGHT_UP, flags=0, payload=None), "05" "00" "0000"),
    ("DOWN_SEEN", dict(type=w.FrameType.DOWN_SEEN, flags=0, payload=dict(count=3)), "06" "00" "0004" "00000003"),
    ("MESSAGE", dict(type=w.FrameType.MESSAGE, flags=0, payload=dict(kind=2, data=0x103)),
     "07" "00" "0009" "02" "0000000000000103"),
    # SC 19 (SC[4] set, out of band in a 9B LRH), 16B: flags 0x80 | 0x13
    ("PACKET", dict(type=w.FrameType.PACKET, flags=0x93, payload=b"\xf0\x02\xff\xff"), "08" "93" "0004" "f002ffff"),
    ("CREDIT", dict(type=w.FrameType.CREDIT, flags=0, payload=dict(count=64)), "09" "00" "0004" "00000040"),
    ("HEARTBEAT", dict(type=w.FrameType.HEARTBEAT, flags=0, payload=None), "0a" "00" "0000"),
    ("REFUSED", dict(type=w.FrameType.REFUSED, flags=0, payload="busy"), "0b" "00" "0004" "62757379"),
]


@pytest.mark.parametrize("name,value,golden", CABLE_FRAMES, ids=[f[0] for f in CABLE_FRAMES])
def test_a_cable_frame_builds_golden_bytes_parses_them_back_and_its_type_bounds_its_length(name, value, golden):
    data = bytes.fromhex(golden)
    assert w.Frame.build(value) == data
    parsed = w.Frame.parse(data)
    assert (parsed.type, parsed.flags) == (value["type"], value["flags"])
    payload = value["payload"]
    if isinstance(payload, dict):
        assert {k: parsed.payload[k] for k in payload} == payload
    else:
        assert parsed.payload == payload
    assert w.FRAME_HEADER.parse(data) == dict(type=value["type"], flags=value["flags"], length=len(data) - 4)
    assert w.FrameDecoder().feed(data) == [(value["type"], value["flags"], data[4:])]
    least, most = w.PAYLOAD_BYTES[value["type"]]
    assert least <= len(data) - 4 <= most


def test_the_fast_builders_agree_with_the_declaration():
    assert w.hello(256, "hfi1") == w.Frame.build(dict(type=w.FrameType.HELLO, flags=0,
                                                      payload=dict(version=w.VERSION, credits=256, name="hfi1")))
    assert w.packet(b"\xf0\x02", 19, True) == w.Frame.build(dict(type=w.FrameType.PACKET, flags=0x93,
                                                                 payload=b"\xf0\x02"))
    assert w.count(w.FrameType.CREDIT, 64) == bytes.fromhex("0900000400000040")
    assert w.refused("busy") == bytes.fromhex("0b00000462757379")
    assert w.IDENTITY.size == w.Identity.sizeof() and w.MESSAGE.size == w.Message.sizeof()
