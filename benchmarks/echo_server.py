"""A bare AF_UNIX echo server: the floor a vfio-user round trip is compared with.
Reads one 32-byte request, sends 32+8 bytes back (the size of a REGION_READ reply of 8 bytes)."""
import os
import socket
import sys

path = sys.argv[1]
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(path + ".tmp")
listener.listen(1)
os.rename(path + ".tmp", path)
print("ready", flush=True)
conn, _ = listener.accept()
reply = bytes(40)
while True:
    data = conn.recv(32)
    if not data:
        break
    conn.sendall(reply)
os.unlink(path)
