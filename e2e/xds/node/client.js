// A proxyless gRPC xDS client (@grpc/grpc-js-xds) for the tests, driven over stdin.
// Usage: node client.js BOOTSTRAP TARGET; commands as in ../client.py:
//   call N -> {"counts": {name: n}, "errors": n, "last_error": "..."}
process.env.GRPC_XDS_BOOTSTRAP = process.argv[2];
const grpc = require('@grpc/grpc-js');
require('@grpc/grpc-js-xds').register();
const readline = require('readline');

const client = new grpc.Client(process.argv[3], grpc.credentials.createInsecure());
const identity = (b) => b;

function who() {
  return new Promise((resolve) => {
    const deadline = new Date(Date.now() + 5000);
    client.makeUnaryRequest('/echo.Echo/Who', identity, identity, Buffer.alloc(0), { deadline }, (err, res) =>
      resolve(err ? { error: `${err.code}: ${err.details}` } : { name: res.toString() }));
  });
}

const lines = readline.createInterface({ input: process.stdin });
const queue = [];
let busy = false;
async function drain() {
  if (busy) return;
  busy = true;
  while (queue.length > 0) {
    const words = queue.shift().trim().split(/\s+/);
    if (words[0] !== 'call') continue;
    const counts = {};
    let errors = 0;
    let last = '';
    for (let i = 0; i < Number(words[1]); i++) {
      const r = await who();
      if (r.error) { errors++; last = r.error; } else { counts[r.name] = (counts[r.name] || 0) + 1; }
    }
    process.stdout.write(JSON.stringify({ counts, errors, last_error: last }) + '\n');
  }
  busy = false;
}
lines.on('line', (l) => { queue.push(l); drain(); });
lines.on('close', () => process.exit(0));
