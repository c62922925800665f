// Multi-host harness: one network namespace per agent, joined by a bridge in the root namespace,
// so that failures between hosts can be made for real (a killed agent, a cut link) on one machine.
//
//   root namespace: PostgreSQL (Unix socket), orp-controller bound to BRIDGE_ADDR, the test itself
//     bridge orpXXXXb  10.231.N.1/24
//       ├─ veth orpXXXXh1 ══ eth0 in netns orp-XXXX-a1  10.231.N.11  orp-agent + its runtimes
//       ├─ veth orpXXXXh2 ══ eth0 in netns orp-XXXX-a2  10.231.N.12
//       └─ veth orpXXXXh3 ══ eth0 in netns orp-XXXX-a3  10.231.N.13
//
// Only addresses under 10.231.0.0/16 are assigned, and only to interfaces made here; N and XXXX
// are random so that two runs on one machine do not collide. cut(i) sets the root end of agent i's
// veth down: the agent's own address stays up inside its namespace (its runtimes keep serving and
// its health probes keep passing), but nothing crosses to the controller either way. teardown()
// deletes the namespaces (which takes their veth ends and the peers with them) and the bridge.
//
// Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN). netnsSupport() says whether this machine allows it;
// the test decides what a "no" means (a failure under CI=true, a skip otherwise).
import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Platform, bin, freePort, runtimesUnder, waitFor } from './harness.js';

const ip = (...args) => execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

// null when namespaces, veth pairs and bridges can be made here; otherwise why not.
export function netnsSupport() {
  const tag = crypto.randomBytes(2).toString('hex');
  const ns = `orp-probe-${tag}`;
  const br = `orp${tag}p`;
  try {
    ip('netns', 'add', ns);
    ip('link', 'add', br, 'type', 'bridge');
    ip('link', 'add', `orp${tag}v`, 'type', 'veth', 'peer', 'name', `orp${tag}w`, 'netns', ns);
    return null;
  } catch (e) {
    return `cannot create network namespaces, bridges or veth pairs here (${String(e.stderr || e.message).trim()})`;
  } finally {
    try { ip('link', 'del', br); } catch { /* never made */ }
    try { ip('link', 'del', `orp${tag}v`); } catch { /* never made, or gone with the namespace */ }
    try { ip('netns', 'del', ns); } catch { /* never made */ }
  }
}

export class Net {
  constructor(nagents) {
    this.tag = crypto.randomBytes(2).toString('hex');
    this.subnet = `10.231.${crypto.randomInt(0, 256)}`;
    this.bridge = `orp${this.tag}b`;
    this.bridgeAddr = `${this.subnet}.1`;
    this.hosts = [];
    for (let i = 1; i <= nagents; i++) {
      this.hosts.push({ ns: `orp-${this.tag}-a${i}`, veth: `orp${this.tag}h${i}`, addr: `${this.subnet}.${10 + i}` });
    }
  }

  setup() {
    ip('link', 'add', this.bridge, 'type', 'bridge', 'forward_delay', '0', 'stp_state', '0');
    ip('addr', 'add', `${this.bridgeAddr}/24`, 'dev', this.bridge);
    ip('link', 'set', this.bridge, 'up');
    for (const h of this.hosts) {
      ip('netns', 'add', h.ns);
      ip('link', 'add', h.veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', h.ns);
      ip('link', 'set', h.veth, 'master', this.bridge);
      ip('link', 'set', h.veth, 'up');
      ip('-n', h.ns, 'link', 'set', 'lo', 'up');
      ip('-n', h.ns, 'addr', 'add', `${h.addr}/24`, 'dev', 'eth0');
      ip('-n', h.ns, 'link', 'set', 'eth0', 'up');
    }
  }

  // Agent i (0-based) can no longer reach anyone, nor be reached; its processes live on.
  cut(i) { ip('link', 'set', this.hosts[i].veth, 'down'); }

  restore(i) { ip('link', 'set', this.hosts[i].veth, 'up'); }

  teardown() {
    for (const h of this.hosts) {
      try { ip('netns', 'del', h.ns); } catch { /* not made */ }
      try { ip('link', 'del', h.veth); } catch { /* gone with its peer */ }
    }
    try { ip('link', 'del', this.bridge); } catch { /* not made */ }
  }
}

export { runtimesUnder };

// A Platform whose controller listens on the bridge and whose agents each run in a namespace.
export class MultiHost extends Platform {
  constructor(nagents = 3) {
    super();
    this.net = new Net(nagents);
    this.agents = this.net.hosts.map((h, i) => ({ ...h, name: `mh-a${i + 1}`, stateDir: path.join(this.tmp, `agent-a${i + 1}`) }));
  }

  async start({ cpuSlots = 1, heartbeatMs = 400, livenessMs = 3000 } = {}) {
    this.net.setup();
    this.timers = { heartbeatMs, livenessMs };
    const db = await this.startDatabase();

    const addr = this.net.bridgeAddr;
    this.ports = { api: await freePort(), gateway: await freePort(), agent: await freePort() };
    this.agentToken = 'e2e-agent-token';
    this.spawn('controller', bin.controller, ['serve', ...db, '--listen-host', addr,
      '--api-port', String(this.ports.api), '--gateway-port', String(this.ports.gateway),
      '--agent-port', String(this.ports.agent), '--agent-token', this.agentToken,
      '--heartbeat-ms', String(heartbeatMs), '--scheduler-interval-ms', '300',
      '--liveness-timeout-ms', String(livenessMs), '--log-level', 'debug']);
    this.apiUrl = `http://${addr}:${this.ports.api}`;
    this.gatewayUrl = `http://${addr}:${this.ports.gateway}/v1`;
    await waitFor('controller /healthz', async () => (await fetch(`${this.apiUrl}/healthz`)).ok, 20000);

    this.cpuSlots = cpuSlots;
    for (let i = 0; i < this.agents.length; i++) this.startAgent(i);
    await waitFor('every agent to register', async () =>
      (await this.db.query('SELECT count(*)::int AS n FROM gpus')).rows[0].n === cpuSlots * this.agents.length, 20000);
    return this;
  }

  // Starts (or restarts, with the same name and state directory) agent i inside its namespace.
  // `ip netns exec` execs the agent in place, so the child's pid is the agent's own.
  startAgent(i) {
    const a = this.agents[i];
    const logName = `agent-a${i + 1}`;
    const args = ['netns', 'exec', a.ns, bin.agent,
      '--controller', `http://${this.net.bridgeAddr}:${this.ports.agent}`,
      '--token', this.agentToken, '--name', a.name, '--cpu-slots', String(this.cpuSlots),
      '--state-dir', a.stateDir, '--heartbeat-ms', String(this.timers.heartbeatMs),
      '--runtime-host', a.addr, '--advertise-addr', a.addr, '--port-base', '20000',
      '--log-level', 'debug'];
    const fd = fs.openSync(path.join(this.tmp, `${logName}.log`), 'a');
    const p = spawn('ip', args, { stdio: ['ignore', fd, fd] });
    p.name = logName;
    this.procs.push(p);
    a.proc = p;
    return p;
  }

  async hostId(i) {
    const r = await this.db.query('SELECT id::int AS id FROM hosts WHERE name = $1', [this.agents[i].name]);
    return r.rows[0]?.id;
  }

  async stop() {
    try {
      await super.stop();
    } finally {
      this.net.teardown();
    }
  }
}
