# A minimal MySQL client for the prepared-statement fixture: mysql_native_password login,
# COM_STMT_PREPARE, COM_STMT_EXECUTE (one int parameter), COM_STMT_CLOSE, COM_QUIT.
import hashlib, socket, struct, sys
host, port, user, pw, db = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
s = socket.create_connection((host, port))
def recv_exactly(n):
    b = b''
    while len(b) < n:
        chunk = s.recv(n - len(b))
        if not chunk:
            sys.exit('connection closed by the server')
        b += chunk
    return b
def read():
    h = recv_exactly(4)
    return h[3], recv_exactly(h[0] | h[1] << 8 | h[2] << 16)
def send(seq, body): s.sendall(struct.pack('<I', len(body))[:3] + bytes([seq]) + body)
seq, greet = read()
i = greet.index(b'\0', 1) + 1
salt1 = greet[i + 4:i + 12]
rest = greet[i + 12 + 1 + 2 + 1 + 2 + 2 + 1 + 10:]
salt = salt1 + rest[:12]
h1 = hashlib.sha1(pw.encode()).digest(); h2 = hashlib.sha1(h1).digest()
tok = bytes(a ^ b for a, b in zip(h1, hashlib.sha1(salt + h2).digest()))
caps = (0x000fa685 | 0x8) & ~0x800  # protocol 41, secure conn, plugin auth, connect with db, no SSL
resp = struct.pack('<IIB23x', caps, 1 << 24, 33) + user.encode() + b'\0' + bytes([len(tok)]) + tok + db.encode() + b'\0' + b'mysql_native_password\0'
send(1, resp)
seq, r = read()
if r[0] == 0xfe:  # auth switch: answer with the server's new salt
    name_end = r.index(b'\0', 1)
    salt = r[name_end + 1:name_end + 21]
    tok = bytes(a ^ b for a, b in zip(h1, hashlib.sha1(salt + h2).digest()))
    send(seq + 1, tok)
    seq, r = read()
print('auth', r[:1])
def until_eof():
    while True:
        _, p = read()
        if p[0] in (0xfe,) and len(p) < 9: return
def command(body):
    send(0, body)
stmt = sys.argv[6].encode()
command(b'\x16' + stmt)
_, ok = read()
stmt_id, ncols, nparams = struct.unpack('<IHH', ok[1:9])
print('prepared', stmt_id, ncols, nparams)
if nparams: until_eof()
if ncols: until_eof()
params = [int(x) for x in sys.argv[7:]]
body = b'\x17' + struct.pack('<IBI', stmt_id, 0, 1)
if params:
    body += b'\0' * ((len(params) + 7) // 8) + b'\x01' + b'\x08\x00' * len(params) + b''.join(struct.pack('<q', p) for p in params)
command(body)
_, first = read()
print('execute', first[:1])
if first[0] not in (0x00, 0xff):
    until_eof()  # columns
    until_eof()  # rows
command(b'\x19' + struct.pack('<I', stmt_id))
command(b'\x01')
