// The official Alibaba Cloud Node.js SDK (@alicloud/pop-core, RPC style)
// against a deckhand hub: the statuses and error codes it sees are
// Alibaba's. Run by tests/sdk_node.rs; configuration from the environment
// (DECKHAND_ENDPOINT, DECKHAND_AK, DECKHAND_SK, DECKHAND_INSTANCE; the hub's
// CA comes in through NODE_EXTRA_CA_CERTS).
'use strict';

const assert = require('assert');
const RPCClient = require('@alicloud/pop-core').RPCClient;

const client = new RPCClient({
  accessKeyId: process.env.DECKHAND_AK,
  accessKeySecret: process.env.DECKHAND_SK,
  endpoint: `https://${process.env.DECKHAND_ENDPOINT}`,
  apiVersion: '2014-05-26',
});
const instance = process.env.DECKHAND_INSTANCE;
const FINAL = new Set(['Finished', 'Failed', 'Stopped']);

async function call(action, params) {
  return client.request(action, { RegionId: 'cn-hangzhou', ...params }, { method: 'POST', timeout: 10000 });
}

async function waitFinal(invokeId) {
  const deadline = Date.now() + 30000;
  for (;;) {
    const r = await call('DescribeInvocationResults', { InvokeId: invokeId });
    const list = r.Invocation.InvocationResults.InvocationResult;
    if (list.length > 0 && list.every((x) => FINAL.has(x.InvokeRecordStatus))) return list[0];
    assert.ok(Date.now() < deadline, `${invokeId} not final: ${JSON.stringify(list)}`);
    await new Promise((res) => setTimeout(res, 200));
  }
}

async function main() {
  const ok = await call('RunCommand', { Type: 'RunShellScript', CommandContent: 'echo node-sdk', InstanceId: [instance] });
  let r = await waitFinal(ok.InvokeId);
  assert.deepStrictEqual([r.InvokeRecordStatus, r.InvocationStatus, r.ExitCode], ['Finished', 'Success', 0]);
  assert.strictEqual(Buffer.from(r.Output, 'base64').toString(), 'node-sdk\n');

  const slow = await call('RunCommand', { Type: 'RunShellScript', CommandContent: 'sleep 30', InstanceId: [instance], Timeout: 1 });
  r = await waitFinal(slow.InvokeId);
  assert.deepStrictEqual([r.InvokeRecordStatus, r.InvocationStatus, r.ErrorCode], ['Failed', 'Timeout', 'ExecutionTimeout']);
  assert.strictEqual(r.ErrorInfo, 'the command execution has been timeout');

  const inv = (await call('DescribeInvocations', { InvokeId: slow.InvokeId })).Invocations.Invocation[0];
  assert.deepStrictEqual([inv.InvokeStatus, inv.InvocationStatus], ['Failed', 'Failed']);

  try {
    await call('DescribeInvocationResults', { InvokeId: 't-nope' });
    assert.fail('an unknown invocation must be refused');
  } catch (e) {
    assert.strictEqual(e.code, 'InvalidInvokeId.NotFound');
  }
  console.log('node sdk: 4 checks passed');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
