"""Tools the tests and benchmarks share, and nothing the product uses
(tests/test_layering.py keeps emulator/ and devmodel/ from importing it):

    client.py        a vfio-user client: what QEMU's vfio-user-pci does
    served.py        a vfio-user server for one model on a thread, and the client to it
    fuzzing.py       the vfio-user message fuzzer
    host.py          a fake host: guest memory and MSI-X for a model driven in-process
    fabric_link.py   a link end that records what the link tells it
    hfi1/            the hfi1 driver's sequences re-enacted (guest.py, probe.py,
                     dc8051.py), the model set up for them (chip.py), two HFIs on a
                     fabric (datapath.py, datapath_fuzz.py), and a model reached
                     through the real protocol (over_vfio_user.py)
"""
