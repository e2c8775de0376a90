// Writes the SHA-256 of the extension's sources next to the built extension (mlnb/labextension/source.sha256):
// tests/test_lab.py fails when the shipped build is older than the TypeScript and CSS it came from.
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const files = ['src', 'style'].flatMap(d => fs.readdirSync(d).sort().map(f => path.join(d, f)));
const h = crypto.createHash('sha256');
for (const f of files) h.update(f + '\n').update(fs.readFileSync(f));
fs.writeFileSync('../mlnb/labextension/source.sha256', h.digest('hex') + '\n');
