#!/usr/bin/env node
// Verify a replytrack webhook request (Node.js, no packages).
//
// In a receiver, call verify(secret, timestamp, signature, rawBody) with the raw request
// body as a Buffer (before JSON.parse). From a shell, for a test:
//
//   WEBHOOK_SECRET=... node verify.js TIMESTAMP SIGNATURE < body.json
//
// exits 0 when the signature is good and the timestamp fresh, 1 otherwise.
"use strict";
const crypto = require("crypto");

const MAX_AGE = 300; // seconds; older requests are refused as possible replays

function verify(secret, timestamp, signature, body, now = Date.now() / 1000) {
  if (!/^\d+$/.test(timestamp) || Math.abs(now - Number(timestamp)) > MAX_AGE) return false;
  const mac = crypto.createHmac("sha256", secret);
  mac.update(Buffer.concat([Buffer.from(timestamp + "."), body]));
  const expected = Buffer.from("sha256=" + mac.digest("hex"));
  const given = Buffer.from(String(signature).trim());
  // timingSafeEqual needs equal lengths; a length mismatch is a bad signature anyway.
  return given.length === expected.length && crypto.timingSafeEqual(given, expected);
}

module.exports = { verify };

if (require.main === module) {
  const chunks = [];
  process.stdin.on("data", (c) => chunks.push(c));
  process.stdin.on("end", () => {
    const ok = verify(process.env.WEBHOOK_SECRET, process.argv[2], process.argv[3], Buffer.concat(chunks));
    console.log(ok ? "valid" : "INVALID");
    process.exit(ok ? 0 : 1);
  });
}
