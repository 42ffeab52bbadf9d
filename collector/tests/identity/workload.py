# A "container" process for collector/tests/identity_e2e.rs. The test has already moved this
# process into its cgroup (the shell that exec'd it wrote its pid to cgroup.procs) and into the
# test's host network namespace. Modes:
#   full PEER MY_IP TCP_SERVER_PORT UDP_SERVER_PORT
#       serves one TCP echo connection and one UDP datagram on MY_IP, and is a client of the
#       peer's echo servers (PEER:9000 TCP, PEER:9001 UDP); prints "ready", then a JSON line
#       with the client ports it used, then "done".
#   udp PEER MY_IP SRC_PORT COUNT
#       sends COUNT datagrams from SRC_PORT to PEER:9001, each answered; prints "done".
#   peer - MY_IP        (in the peer namespace, no cgroup)
#       TCP echo on MY_IP:9000 (a thread per connection) and UDP echo on MY_IP:9001; prints
#       "ready"; exits after 600 s or when stdin closes.
#   connect TARGET MY_IP TCP_PORT UDP_PORT   (in the peer namespace)
#       one TCP echo exchange of 3000 bytes with TARGET:TCP_PORT, one UDP datagram answered by
#       TARGET:UDP_PORT; prints "done".
#   hold PEER MY_IP
#       TCP client that sends 1000 bytes, prints its port, waits for a line on stdin, sends
#       1000 more and closes (the test removes the cgroup in between); prints "done".
import json
import socket
import sys

T = 10.0
mode, peer, me = sys.argv[1], sys.argv[2], sys.argv[3]


def echo_tcp(n):
    c = socket.create_connection((peer, 9000), timeout=T, source_address=(me, 0))
    c.sendall(b"x" * n)
    got = 0
    while got < n:
        d = c.recv(65536)
        if not d:
            break
        got += len(d)
    port = c.getsockname()[1]
    c.close()
    return port


if mode == "peer":
    import threading

    def tcp_echo():
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((me, 9000))
        ls.listen(16)

        def serve(c):
            c.settimeout(30)
            try:
                while True:
                    d = c.recv(65536)
                    if not d:
                        break
                    c.sendall(d)
            except OSError:
                pass
            c.close()

        while True:
            c, _ = ls.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    def udp_echo():
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind((me, 9001))
        while True:
            d, a = u.recvfrom(65536)
            u.sendto(d, a)

    threading.Thread(target=tcp_echo, daemon=True).start()
    threading.Thread(target=udp_echo, daemon=True).start()
    import time
    time.sleep(0.3)
    print("ready", flush=True)
    threading.Thread(target=lambda: (sys.stdin.read(), __import__("os")._exit(0)), daemon=True).start()
    time.sleep(600)
elif mode == "connect":
    target = peer
    tport, uport = int(sys.argv[4]), int(sys.argv[5])
    c = socket.create_connection((target, tport), timeout=T, source_address=(me, 0))
    c.sendall(b"y" * 3000)
    got = 0
    while got < 3000:
        d = c.recv(65536)
        if not d:
            break
        got += len(d)
    c.close()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(T)
    u.bind((me, 0))
    u.sendto(b"pong" * 50, (target, uport))
    u.recvfrom(1000)
    print("done", flush=True)
elif mode == "full":
    tport, uport = int(sys.argv[4]), int(sys.argv[5])
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((me, tport))
    ls.listen(4)
    us = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    us.bind((me, uport))
    print("ready", flush=True)
    ct = echo_tcp(3000)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(T)
    u.bind((me, 0))
    u.sendto(b"ping" * 50, (peer, 9001))
    u.recvfrom(1000)
    cu = u.getsockname()[1]
    u.close()
    print(json.dumps({"tcp_client": ct, "udp_client": cu}), flush=True)
    ls.settimeout(T)
    conn, _ = ls.accept()
    conn.settimeout(T)
    got = 0
    while got < 3000:
        d = conn.recv(65536)
        if not d:
            break
        got += len(d)
        conn.sendall(d)
    conn.close()
    us.settimeout(T)
    d, a = us.recvfrom(1000)
    us.sendto(d, a)
    # Outlive a drain interval, as a container does: its process is looked up then.
    import time
    time.sleep(0.6)
    print("done", flush=True)
elif mode == "udp":
    sport, count = int(sys.argv[4]), int(sys.argv[5])
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    u.settimeout(T)
    u.bind((me, sport))
    for _ in range(count):
        u.sendto(b"reuse", (peer, 9001))
        u.recvfrom(1000)
    u.close()
    # A container lives longer than a drain interval (a shorter one is not named: its cgroup
    # is gone before the collector looks, docs/IDENTITY.md).
    import time
    time.sleep(0.6)
    print("done", flush=True)
elif mode == "hold":
    c = socket.create_connection((peer, 9000), timeout=T, source_address=(me, 0))
    c.sendall(b"h" * 1000)
    got = 0
    while got < 1000:
        got += len(c.recv(65536))
    print(json.dumps({"tcp_client": c.getsockname()[1]}), flush=True)
    sys.stdin.readline()
    c.sendall(b"h" * 1000)
    got = 0
    while got < 1000:
        got += len(c.recv(65536))
    c.close()
    print("done", flush=True)
