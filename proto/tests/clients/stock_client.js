#!/usr/bin/env node
// A stock @grpc/grpc-js client against one banger socket, default options.
//
// What another tool would do: load the .proto files with @grpc/proto-loader
// and dial `unix:` + the socket path. Lists services by reflection (v1 and
// v1alpha, using the reflection protos that @grpc/reflection ships), checks
// grpc.health.v1 (grpc-health-check's proto), and calls every unary and
// server-streaming method of the socket's own API with an empty request,
// which must come back as a real gRPC answer — never UNIMPLEMENTED, INTERNAL
// or UNKNOWN.
//
// Usage: stock_client.js PROTO_ROOT SOCKET EXPECTED_SERVICE [--skip METHOD]...
// Prints one JSON summary line last; exits non-zero on any failure.
'use strict';
const path = require('path');
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');

const [protoRoot, socket, expected, ...rest] = process.argv.slice(2);
const skip = new Set(rest.filter((_, i) => rest[i - 1] === '--skip'));
const ANSWERED = new Set(['OK', 'INVALID_ARGUMENT', 'NOT_FOUND', 'ALREADY_EXISTS',
  'FAILED_PRECONDITION', 'PERMISSION_DENIED', 'OUT_OF_RANGE', 'RESOURCE_EXHAUSTED', 'ABORTED']);
const codeName = (code) => Object.keys(grpc.status).find((k) => grpc.status[k] === code);

function load(file, includeDirs) {
  return grpc.loadPackageDefinition(loader.loadSync(file, {
    includeDirs, keepCase: false, longs: String, enums: String, defaults: true, oneofs: true,
  }));
}

function lookup(pkg, dotted) {
  return dotted.split('.').reduce((o, k) => o && o[k], pkg);
}

function unary(client, method, request) {
  return new Promise((resolve) => {
    client[method](request, { deadline: Date.now() + 20000 }, (err, resp) =>
      resolve(err ? { code: codeName(err.code), details: err.details } : { code: 'OK', resp }));
  });
}

function streaming(client, method, request) {
  return new Promise((resolve) => {
    const call = client[method](request, { deadline: Date.now() + 20000 });
    call.on('data', () => {});
    call.on('error', (err) => resolve({ code: codeName(err.code), details: err.details }));
    call.on('end', () => resolve({ code: 'OK' }));
  });
}

function listServices(reflectionPkg, version) {
  const Svc = lookup(reflectionPkg, `grpc.reflection.${version}.ServerReflection`);
  const client = new Svc('unix:' + socket, grpc.credentials.createInsecure());
  return new Promise((resolve, reject) => {
    const call = client.ServerReflectionInfo();
    call.on('data', (resp) => {
      resolve(resp.listServicesResponse.service.map((s) => s.name).sort());
      call.end();
    });
    call.on('error', reject);
    call.write({ listServices: '' });
  });
}

async function main() {
  const failures = [];
  const reflDir = path.dirname(require.resolve('@grpc/reflection/package.json'));
  const healthDir = path.dirname(require.resolve('grpc-health-check/package.json'));
  const want = [expected, 'banger.runtime.v1.Info', 'grpc.health.v1.Health',
    'grpc.reflection.v1.ServerReflection', 'grpc.reflection.v1alpha.ServerReflection'].sort();
  for (const version of ['v1', 'v1alpha']) {
    const pkg = load(`grpc/reflection/${version}/reflection.proto`, [path.join(reflDir, 'build/proto')]);
    const got = await listServices(pkg, version);
    if (JSON.stringify(got) !== JSON.stringify(want)) {
      failures.push(`reflection ${version} lists ${got}, want ${want}`);
    }
  }

  const healthPkg = load('health/v1/health.proto', [path.join(healthDir, 'proto')]);
  const Health = lookup(healthPkg, 'grpc.health.v1.Health');
  const health = new Health('unix:' + socket, grpc.credentials.createInsecure());
  for (const service of ['', expected]) {
    const r = await unary(health, 'Check', { service });
    if (r.code !== 'OK' || r.resp.status !== 'SERVING') failures.push(`health ${service}: ${JSON.stringify(r)}`);
  }

  // banger.vmm.v1.Vmm -> proto/banger/vmm/v1/vmm.proto
  const [, svcPkg, ver] = expected.split('.');
  const files = require('fs').readdirSync(path.join(protoRoot, 'banger', svcPkg, ver))
    .filter((f) => f.endsWith('.proto')).map((f) => `banger/${svcPkg}/${ver}/${f}`);
  const pkg = load(files, [protoRoot]);
  const Svc = lookup(pkg, expected);
  const client = new Svc('unix:' + socket, grpc.credentials.createInsecure());
  const called = {};
  for (const [name, def] of Object.entries(Svc.service)) {
    if (def.requestStream || skip.has(def.originalName)) continue;
    const r = def.responseStream ? await streaming(client, name, {}) : await unary(client, name, {});
    if (!ANSWERED.has(r.code)) failures.push(`${def.path}: ${r.code}: ${r.details}`);
    called[def.originalName] = r.code;
    process.stderr.write(`${def.path} -> ${r.code}\n`);
  }
  console.log(JSON.stringify({ service: expected, called, failures }));
  process.exit(failures.length || !Object.keys(called).length ? 1 : 0);
}

main().catch((e) => { console.error(e); process.exit(1); });
