// Starts kinesalite (a Kinesis API server from npm) on 127.0.0.1 on an
// ephemeral port and prints `listening <port>`; the tests run it with
// NODE_PATH pointing at the node_modules it was installed into.
const kinesalite = require('kinesalite');
const server = kinesalite({ createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0, shardLimit: 100 });
server.listen(0, '127.0.0.1', (err) => {
  if (err) { console.error(err); process.exit(1); }
  console.log(`listening ${server.address().port}`);
});
process.on('SIGTERM', () => process.exit(0));
// SIGUSR2 moves kinesalite's clock 25 hours ahead: every record put so far
// is then older than the stream's retention (24 hours, the least Kinesis
// allows) and kinesalite trims it, as Kinesis would after a long outage.
let shift = 0;
const realNow = Date.now;
Date.now = () => realNow() + shift;
process.on('SIGUSR2', () => {
  shift += 25 * 3600 * 1000;
});
