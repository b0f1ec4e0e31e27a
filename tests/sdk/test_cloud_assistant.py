"""The official Alibaba Cloud Python SDKs drive a deckhand hub unchanged.

Run by tests/sdk_python.rs against a real hub and agent; configuration
comes from the environment:
  DECKHAND_ENDPOINT  host:port of the hub (HTTPS)
  DECKHAND_CA        the hub's CA certificate (PEM)
  DECKHAND_AK / DECKHAND_SK   an AccessKey pair the hub accepts
  DECKHAND_INSTANCE  a registered, online instance id
  DECKHAND_OFFLINE_INSTANCE  a registered instance whose agent is stopped
                     (the hub runs with a 3 s delivery timeout)
Both SDK generations are exercised: the classic aliyun-python-sdk-core
(RPC v1, HMAC-SHA1) and the tea SDK alibabacloud-ecs20140526
(ACS3-HMAC-SHA256).
"""

import base64
import json
import os
import time
import uuid

import pytest

from aliyunsdkcore.client import AcsClient
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkecs.request.v20140526 import (
    CreateCommandRequest,
    DeleteCommandRequest,
    DescribeCommandsRequest,
    DescribeInvocationResultsRequest,
    DescribeInvocationsRequest,
    DescribeSendFileResultsRequest,
    InvokeCommandRequest,
    ModifyInvocationAttributeRequest,
    RunCommandRequest,
    SendFileRequest,
    StopInvocationRequest,
    TagResourcesRequest,
)
from alibabacloud_ecs20140526.client import Client as EcsClient
from alibabacloud_ecs20140526 import models as ecs
from alibabacloud_tea_openapi import models as open_api
from alibabacloud_tea_util import models as util

ENDPOINT = os.environ["DECKHAND_ENDPOINT"]
CA = os.environ["DECKHAND_CA"]
AK = os.environ["DECKHAND_AK"]
SK = os.environ["DECKHAND_SK"]
INSTANCE = os.environ["DECKHAND_INSTANCE"]
OFFLINE = os.environ["DECKHAND_OFFLINE_INSTANCE"]
# Record-level states a run settles in; Cloud Assistant has no "Timeout" here.
FINAL = {"Finished", "Failed", "Stopped"}


def classic(secret=SK, key=AK):
    c = AcsClient(key, secret, "cn-hangzhou", verify=CA)
    return c


def classic_call(req, client=None):
    req.set_endpoint(ENDPOINT)
    req.set_protocol_type("https")
    return json.loads((client or classic()).do_action_with_exception(req))


def tea(secret=SK):
    cfg = open_api.Config(access_key_id=AK, access_key_secret=secret, endpoint=ENDPOINT, protocol="https", region_id="cn-hangzhou")
    return EcsClient(cfg)


RUNTIME = util.RuntimeOptions(ca=CA)


def wait_final_classic(invoke_id, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        req = DescribeInvocationResultsRequest.DescribeInvocationResultsRequest()
        req.set_InvokeId(invoke_id)
        res = classic_call(req)
        results = res["Invocation"]["InvocationResults"]["InvocationResult"]
        if results and all(r["InvokeRecordStatus"] in FINAL for r in results):
            return results
        time.sleep(0.2)
    raise AssertionError(f"{invoke_id} not final after {timeout}s")


def test_classic_sdk_run_command_and_results():
    req = RunCommandRequest.RunCommandRequest()
    req.set_Type("RunShellScript")
    req.set_CommandContent("echo hello-from-classic-sdk; exit 3")
    req.set_InstanceIds([INSTANCE])
    req.set_Timeout(30)
    res = classic_call(req)
    assert res["InvokeId"].startswith("t-") and res["CommandId"].startswith("c-") and res["RequestId"]
    results = wait_final_classic(res["InvokeId"])
    r = results[0]
    assert r["InstanceId"] == INSTANCE
    assert r["InvokeRecordStatus"] == "Finished"
    assert r["ExitCode"] == 3
    assert r["ErrorCode"] == "ExitCodeNonzero"
    assert r["ErrorInfo"] == "the command execution exit code is not zero"
    assert r["InvocationStatus"] == "Failed"
    assert base64.b64decode(r["Output"]) == b"hello-from-classic-sdk\n"

    d = DescribeInvocationsRequest.DescribeInvocationsRequest()
    d.set_InvokeId(res["InvokeId"])
    inv = classic_call(d)["Invocations"]["Invocation"][0]
    assert inv["InvokeStatus"] == "Finished"
    assert inv["InvocationStatus"] == "Failed"
    assert inv["InvokeInstances"]["InvokeInstance"][0]["InvocationStatus"] == "Failed"
    assert inv["InvokeInstances"]["InvokeInstance"][0]["InstanceId"] == INSTANCE


def test_classic_sdk_create_invoke_describe_delete_command():
    c = CreateCommandRequest.CreateCommandRequest()
    name = "sdk-" + uuid.uuid4().hex[:8]
    c.set_Name(name)
    c.set_Type("RunShellScript")
    c.set_CommandContent(base64.b64encode(b"echo hi {{who}}").decode())
    c.set_EnableParameter(True)
    command_id = classic_call(c)["CommandId"]
    dc = DescribeCommandsRequest.DescribeCommandsRequest()
    dc.set_CommandId(command_id)
    cmd = classic_call(dc)["Commands"]["Command"][0]
    assert cmd["Name"] == name and cmd["ParameterNames"]["ParameterName"] == ["who"]

    i = InvokeCommandRequest.InvokeCommandRequest()
    i.set_CommandId(command_id)
    i.set_InstanceIds([INSTANCE])
    i.set_Parameters(json.dumps({"who": "operator"}))
    invoke_id = classic_call(i)["InvokeId"]
    r = wait_final_classic(invoke_id)[0]
    assert base64.b64decode(r["Output"]) == b"hi operator\n"

    dl = DeleteCommandRequest.DeleteCommandRequest()
    dl.set_CommandId(command_id)
    classic_call(dl)
    assert classic_call(dc)["Commands"]["Command"] == []
    again = InvokeCommandRequest.InvokeCommandRequest()
    again.set_CommandId(command_id)
    again.set_InstanceIds([INSTANCE])
    with pytest.raises(ServerException) as e:
        classic_call(again)
    assert e.value.get_error_code() == "InvalidCommandId.NotFound"


def test_classic_sdk_bad_secret_is_signature_mismatch():
    req = DescribeInvocationsRequest.DescribeInvocationsRequest()
    with pytest.raises(ServerException) as e:
        classic_call(req, client=classic(secret="wrong-secret"))
    # The hub answers SignatureDoesNotMatch with its string to sign; the
    # classic SDK compares that with its own and, finding them equal,
    # reports the secret as wrong, exactly as against Alibaba Cloud.
    assert e.value.get_error_code() == "InvalidAccessKeySecret"
    assert e.value.get_http_status() == 400


def test_classic_sdk_unknown_key():
    req = DescribeInvocationsRequest.DescribeInvocationsRequest()
    with pytest.raises(ServerException) as e:
        classic_call(req, client=classic(key="LTAI-nobody"))
    assert e.value.get_error_code() == "InvalidAccessKeyId.NotFound"
    assert e.value.get_http_status() == 404


def test_tea_sdk_run_command_and_results():
    client = tea()
    req = ecs.RunCommandRequest(region_id="cn-hangzhou", type="RunShellScript", command_content="echo tea-sdk; printf '\\377'", instance_id=[INSTANCE], timeout=30)
    res = client.run_command_with_options(req, RUNTIME)
    invoke_id = res.body.invoke_id
    assert invoke_id.startswith("t-")
    deadline = time.time() + 30
    while True:
        out = client.describe_invocation_results_with_options(ecs.DescribeInvocationResultsRequest(region_id="cn-hangzhou", invoke_id=invoke_id), RUNTIME)
        results = out.body.invocation.invocation_results.invocation_result
        if results and all(r.invoke_record_status in FINAL for r in results):
            break
        assert time.time() < deadline
        time.sleep(0.2)
    r = results[0]
    assert r.invoke_record_status == "Finished" and r.exit_code == 0
    assert r.invocation_status == "Success"
    # Invalid UTF-8 survives: Output is base64 of the raw bytes.
    assert base64.b64decode(r.output) == b"tea-sdk\n\xff"
    d = client.describe_invocations_with_options(ecs.DescribeInvocationsRequest(region_id="cn-hangzhou", invoke_id=invoke_id), RUNTIME)
    inv = d.body.invocations.invocation[0]
    assert inv.invocation_status == "Success"
    assert inv.invoke_instances.invoke_instance[0].instance_id == INSTANCE


def tea_result(client, invoke_id, until, timeout=30):
    """Polls DescribeInvocationResults until `until(result)` holds."""
    deadline = time.time() + timeout
    while True:
        out = client.describe_invocation_results_with_options(ecs.DescribeInvocationResultsRequest(region_id="cn-hangzhou", invoke_id=invoke_id), RUNTIME)
        results = out.body.invocation.invocation_results.invocation_result
        if results and until(results[0]):
            return results[0]
        assert time.time() < deadline, f"{invoke_id}: condition not reached; last {results[0].to_map() if results else None}"
        time.sleep(0.2)


def test_tea_sdk_stop_while_running_is_terminated():
    client = tea()
    req = ecs.RunCommandRequest(region_id="cn-hangzhou", type="RunShellScript", command_content="sleep 60", instance_id=[INSTANCE], timeout=120)
    invoke_id = client.run_command_with_options(req, RUNTIME).body.invoke_id
    tea_result(client, invoke_id, lambda r: r.invocation_status == "Running")
    client.stop_invocation_with_options(ecs.StopInvocationRequest(region_id="cn-hangzhou", invoke_id=invoke_id), RUNTIME)
    r = tea_result(client, invoke_id, lambda r: r.invoke_record_status in FINAL)
    assert r.invoke_record_status == "Stopped"
    assert r.invocation_status == "Terminated"
    inv = client.describe_invocations_with_options(ecs.DescribeInvocationsRequest(region_id="cn-hangzhou", invoke_id=invoke_id), RUNTIME).body.invocations.invocation[0]
    assert (inv.invoke_status, inv.invocation_status) == ("Stopped", "Stopped")


def test_tea_sdk_stop_before_start_is_cancelled():
    # NextRebootOnly: delivered and Scheduled, never started on this boot.
    client = tea()
    req = ecs.RunCommandRequest(region_id="cn-hangzhou", type="RunShellScript", command_content="echo never", instance_id=[INSTANCE], repeat_mode="NextRebootOnly")
    invoke_id = client.run_command_with_options(req, RUNTIME).body.invoke_id
    tea_result(client, invoke_id, lambda r: r.invocation_status == "Scheduled")
    client.stop_invocation_with_options(ecs.StopInvocationRequest(region_id="cn-hangzhou", invoke_id=invoke_id), RUNTIME)
    r = tea_result(client, invoke_id, lambda r: r.invoke_record_status in FINAL)
    assert (r.invoke_record_status, r.invocation_status) == ("Stopped", "Cancelled")


def test_timeout_is_failed_with_execution_timeout_in_both_sdks():
    req = RunCommandRequest.RunCommandRequest()
    req.set_Type("RunShellScript")
    req.set_CommandContent("sleep 30")
    req.set_InstanceIds([INSTANCE])
    req.set_Timeout(1)
    invoke_id = classic_call(req)["InvokeId"]
    r = wait_final_classic(invoke_id)[0]
    assert r["InvokeRecordStatus"] == "Failed"
    assert r["InvocationStatus"] == "Timeout"
    assert r["ErrorCode"] == "ExecutionTimeout"
    assert r["ErrorInfo"] == "the command execution has been timeout"
    # A user filtering InvokeRecordStatus=Failed finds the timeout.
    client = tea()
    out = client.describe_invocation_results_with_options(
        ecs.DescribeInvocationResultsRequest(region_id="cn-hangzhou", invoke_id=invoke_id, invoke_record_status="Failed"), RUNTIME
    )
    found = out.body.invocation.invocation_results.invocation_result
    assert [x.invocation_status for x in found] == ["Timeout"]
    inv = client.describe_invocations_with_options(ecs.DescribeInvocationsRequest(region_id="cn-hangzhou", invoke_id=invoke_id), RUNTIME).body.invocations.invocation[0]
    assert (inv.invoke_status, inv.invocation_status) == ("Failed", "Failed")


def test_could_not_start_is_invalid():
    client = tea()
    req = ecs.RunCommandRequest(region_id="cn-hangzhou", type="RunShellScript", command_content="pwd", instance_id=[INSTANCE], working_dir="/nonexistent/deckhand-sdk")
    invoke_id = client.run_command_with_options(req, RUNTIME).body.invoke_id
    r = tea_result(client, invoke_id, lambda r: r.invoke_record_status in FINAL)
    assert (r.invoke_record_status, r.invocation_status) == ("Failed", "Invalid")
    assert r.error_code == "DirectoryNotExists"
    assert r.error_info == "the specified directory does not exists"


def test_delivery_timeout_is_aborted():
    # The offline instance's agent is stopped: nothing takes the
    # invocation, and the hub's 3 s delivery timeout aborts it.
    req = RunCommandRequest.RunCommandRequest()
    req.set_Type("RunShellScript")
    req.set_CommandContent("true")
    req.set_InstanceIds([OFFLINE])
    invoke_id = classic_call(req)["InvokeId"]
    r = wait_final_classic(invoke_id)[0]
    assert (r["InvokeRecordStatus"], r["InvocationStatus"]) == ("Failed", "Aborted")
    assert r["ErrorCode"] == "ClientNotResponse"
    assert r["ErrorInfo"] == "the aliyun service in the instance does not response"


def test_tea_sdk_errors_are_alibaba_style():
    from Tea.exceptions import TeaException

    with pytest.raises(TeaException) as e:
        tea(secret="wrong").describe_invocations_with_options(ecs.DescribeInvocationsRequest(region_id="cn-hangzhou"), RUNTIME)
    assert e.value.code == "SignatureDoesNotMatch"
    with pytest.raises(TeaException) as e:
        tea().describe_invocation_results_with_options(ecs.DescribeInvocationResultsRequest(region_id="cn-hangzhou", invoke_id="t-nope"), RUNTIME)
    assert e.value.code == "InvalidInvokeId.NotFound"
    with pytest.raises(TeaException) as e:
        tea().run_command_with_options(ecs.RunCommandRequest(region_id="cn-hangzhou", type="RunShellScript", command_content="true", instance_id=["i-missing"]), RUNTIME)
    assert e.value.code == "InvalidInstance.NotFound"


def tag_both(key, value):
    """Tags the online and the offline instance with key=value (classic SDK)."""
    req = TagResourcesRequest.TagResourcesRequest()
    req.set_ResourceType("instance")
    req.set_ResourceIds([INSTANCE, OFFLINE])
    req.set_Tags([{"Key": key, "Value": value}])
    classic_call(req)


def test_classic_sdk_targets_by_resource_tag():
    # ResourceTag.N as Cloud Assistant defines it: every instance carrying
    # the tag; the offline one ends at once with ClientNotRunning.
    key = f"sdk-fleet-{uuid.uuid4().hex[:8]}"
    tag_both(key, "prod")
    req = RunCommandRequest.RunCommandRequest()
    req.set_Type("RunShellScript")
    req.set_CommandContent("echo tagged")
    req.set_ResourceTags([{"Key": key, "Value": "prod"}])
    req.set_Timeout(30)
    invoke_id = classic_call(req)["InvokeId"]
    results = {r["InstanceId"]: r for r in wait_final_classic(invoke_id)}
    assert set(results) == {INSTANCE, OFFLINE}
    ok, off = results[INSTANCE], results[OFFLINE]
    assert (ok["InvocationStatus"], base64.b64decode(ok["Output"])) == ("Success", b"tagged\n")
    assert (off["InvokeRecordStatus"], off["InvocationStatus"], off["ErrorCode"]) == ("Failed", "Aborted", "ClientNotRunning")
    assert off["ErrorInfo"] == "the aliyun service is not running on the instance"
    d = DescribeInvocationsRequest.DescribeInvocationsRequest()
    d.set_InvokeId(invoke_id)
    inv = classic_call(d)["Invocations"]["Invocation"][0]
    assert {i["InstanceId"] for i in inv["InvokeInstances"]["InvokeInstance"]} == {INSTANCE, OFFLINE}
    # A key without a value matches any value; a value nobody has matches nothing.
    req = RunCommandRequest.RunCommandRequest()
    req.set_Type("RunShellScript")
    req.set_CommandContent("true")
    req.set_ResourceTags([{"Key": key, "Value": "staging"}])
    with pytest.raises(ServerException) as e:
        classic_call(req)
    assert e.value.get_error_code() == "InvalidInstance.NotFound"


def test_tea_sdk_resource_tag_and_dry_run():
    key = f"sdk-tea-{uuid.uuid4().hex[:8]}"
    tag_both(key, "any")
    client = tea()
    tags = [ecs.RunCommandRequestResourceTag(key=key)]
    dry = client.run_command_with_options(
        ecs.RunCommandRequest(region_id="cn-hangzhou", type="RunShellScript", command_content="true", resource_tag=tags, repeat_mode="DryRun"), RUNTIME
    )
    assert not dry.body.invoke_id
    res = client.run_command_with_options(
        ecs.RunCommandRequest(region_id="cn-hangzhou", type="RunShellScript", command_content="echo tea-tagged", resource_tag=tags, timeout=30), RUNTIME
    )
    deadline = time.time() + 30
    while True:
        out = client.describe_invocation_results_with_options(
            ecs.DescribeInvocationResultsRequest(region_id="cn-hangzhou", invoke_id=res.body.invoke_id, instance_id=INSTANCE), RUNTIME
        )
        r = out.body.invocation.invocation_results.invocation_result[0]
        if r.invoke_record_status in FINAL:
            break
        assert time.time() < deadline, r.to_map()
        time.sleep(0.2)
    assert (r.invocation_status, r.exit_code) == ("Success", 0)


def test_classic_sdk_modify_invocation_attribute():
    # A schedule that will not fire during the test, on the online instance.
    req = RunCommandRequest.RunCommandRequest()
    req.set_Type("RunShellScript")
    req.set_CommandContent("echo {{greeting}}")
    req.set_EnableParameter(True)
    req.set_Parameters(json.dumps({"greeting": "hi"}))
    req.set_RepeatMode("Period")
    req.set_Frequency("0 0 0 1 1 ? 2099")
    req.set_Timeout(5)
    req.set_InstanceIds([INSTANCE])
    invoke_id = classic_call(req)["InvokeId"]
    # The agent holds (journaled, armed) the schedule before it is changed.
    results_of = DescribeInvocationResultsRequest.DescribeInvocationResultsRequest()
    results_of.set_InvokeId(invoke_id)
    deadline = time.time() + 30
    while classic_call(results_of)["Invocation"]["InvocationResults"]["InvocationResult"][0]["InvocationStatus"] != "Running":
        assert time.time() < deadline, "the schedule was never armed on the agent"
        time.sleep(0.2)
    m = ModifyInvocationAttributeRequest.ModifyInvocationAttributeRequest()
    m.set_InvokeId(invoke_id)
    m.set_Frequency("0 30 0 1 1 ? 2099")
    m.set_Parameters(json.dumps({"greeting": "hello"}))
    m.set_InstanceIds([OFFLINE])
    res = classic_call(m)
    assert res["CommandId"].startswith("c-") and res["RequestId"]
    d = DescribeInvocationsRequest.DescribeInvocationsRequest()
    d.set_InvokeId(invoke_id)
    inv = classic_call(d)["Invocations"]["Invocation"][0]
    assert inv["Frequency"] == "0 30 0 1 1 ? 2099"
    assert json.loads(inv["Parameters"]) == {"greeting": "hello"}
    assert {i["InstanceId"] for i in inv["InvokeInstances"]["InvokeInstance"]} == {INSTANCE, OFFLINE}
    # The agent that already held the schedule picks the change up: made
    # to fire every 10 s, it runs with the new parameter value.
    m = ModifyInvocationAttributeRequest.ModifyInvocationAttributeRequest()
    m.set_InvokeId(invoke_id)
    m.set_Frequency("*/10 * * * * ?")
    classic_call(m)
    history = DescribeInvocationResultsRequest.DescribeInvocationResultsRequest()
    history.set_InvokeId(invoke_id)
    history.set_InstanceId(INSTANCE)
    history.set_IncludeHistory(True)
    deadline = time.time() + 45
    while True:
        runs = classic_call(history)["Invocation"]["InvocationResults"]["InvocationResult"]
        outputs = [base64.b64decode(r["Output"]) for r in runs if r["InvocationStatus"] == "Success"]
        if outputs:
            break
        assert time.time() < deadline, runs
        time.sleep(0.2)
    assert outputs[0] == b"hello\n", outputs
    # Refused as RunCommand refuses: a schedule the agents cannot fire, a
    # parameter the script does not have.
    bad = ModifyInvocationAttributeRequest.ModifyInvocationAttributeRequest()
    bad.set_InvokeId(invoke_id)
    bad.set_Frequency("every now and then")
    with pytest.raises(ServerException) as e:
        classic_call(bad)
    assert e.value.get_error_code() == "InvalidParameter.Frequency"
    bad = ModifyInvocationAttributeRequest.ModifyInvocationAttributeRequest()
    bad.set_InvokeId(invoke_id)
    bad.set_Parameters(json.dumps({"other": "x"}))
    with pytest.raises(ServerException) as e:
        classic_call(bad)
    assert e.value.get_error_code() == "InvalidParameter.Parameters"
    stop = StopInvocationRequest.StopInvocationRequest()
    stop.set_InvokeId(invoke_id)
    classic_call(stop)


# SendFile (issue #19). The agent runs on this host, so the test reads what
# it wrote. Per-instance statuses a file delivery settles in:
FILE_FINAL = {"Success", "Failed", "Invalid", "Timeout", "Error", "Aborted", "Cancelled", "Terminated"}
# The invocation's aggregate and its instances are read one after the other,
# so a poll can see the instance settled a moment before the aggregate: wait
# for both.
INVOCATION_OPEN = {"Pending", "Scheduled", "Running", "Stopping"}


def file_result_classic(invoke_id, timeout=30):
    """Polls DescribeSendFileResults (classic SDK) until the instance settles."""
    deadline = time.time() + timeout
    while True:
        req = DescribeSendFileResultsRequest.DescribeSendFileResultsRequest()
        req.set_InvokeId(invoke_id)
        inv = classic_call(req)["Invocations"]["Invocation"][0]
        inst = inv["InvokeInstances"]["InvokeInstance"][0]
        if inst["InvocationStatus"] in FILE_FINAL and inv["InvocationStatus"] not in INVOCATION_OPEN:
            return inv, inst
        assert time.time() < deadline, f"{invoke_id} not final: {inv}"
        time.sleep(0.2)


def send_file_tea(client, **kw):
    req = ecs.SendFileRequest(region_id="cn-hangzhou", instance_id=[INSTANCE], timeout=30, **kw)
    return client.send_file_with_options(req, RUNTIME).body.invoke_id


def file_result_tea(client, invoke_id, timeout=30):
    deadline = time.time() + timeout
    while True:
        req = ecs.DescribeSendFileResultsRequest(region_id="cn-hangzhou", invoke_id=invoke_id)
        inv = client.describe_send_file_results_with_options(req, RUNTIME).body.invocations.invocation[0]
        inst = inv.invoke_instances.invoke_instance[0]
        if inst.invocation_status in FILE_FINAL and inv.invocation_status not in INVOCATION_OPEN:
            return inv, inst
        assert time.time() < deadline, inv.to_map()
        time.sleep(0.2)


def test_classic_sdk_send_file_and_results():
    target = f"/tmp/deckhand-sdk-{uuid.uuid4().hex[:8]}/etc/app"
    body = b"listen = 8080\n\x00\xff binary survives\n"
    req = SendFileRequest.SendFileRequest()
    req.set_Name("app.conf")
    req.set_TargetDir(target)
    req.set_Content(base64.b64encode(body).decode())
    req.set_ContentType("Base64")
    req.set_FileMode("0640")
    req.set_Description("sdk test file")
    req.set_InstanceIds([INSTANCE])
    res = classic_call(req)
    assert res["InvokeId"].startswith("f-") and res["RequestId"]
    inv, inst = file_result_classic(res["InvokeId"])
    assert (inst["InstanceId"], inst["InvocationStatus"], inst["ErrorCode"]) == (INSTANCE, "Success", "")
    assert inv["InvocationStatus"] == "Success"
    assert (inv["Name"], inv["TargetDir"], inv["FileMode"], inv["ContentType"]) == ("app.conf", target, "0640", "Base64")
    assert inv["Overwrite"] == "false" and inv["VmCount"] == 1 and inv["Description"] == "sdk test file"
    assert base64.b64decode(inv["Content"]) == body
    path = os.path.join(target, "app.conf")
    with open(path, "rb") as f:
        assert f.read() == body
    assert os.stat(path).st_mode & 0o7777 == 0o640
    # No temporary file is left beside it.
    assert os.listdir(target) == ["app.conf"]
    # File deliveries are not commands: DescribeInvocations leaves them out.
    d = DescribeInvocationsRequest.DescribeInvocationsRequest()
    d.set_InvokeId(res["InvokeId"])
    assert classic_call(d)["Invocations"]["Invocation"] == []
    # Filters: by name, and a name that matches nothing.
    q = DescribeSendFileResultsRequest.DescribeSendFileResultsRequest()
    q.set_Name("app.conf")
    q.set_InstanceId(INSTANCE)
    assert res["InvokeId"] in {i["InvokeId"] for i in classic_call(q)["Invocations"]["Invocation"]}
    q.set_Name("no-such-file.conf")
    assert classic_call(q)["Invocations"]["Invocation"] == []


def test_tea_sdk_send_file_overwrite_false_is_file_already_exists():
    client = tea()
    target = f"/tmp/deckhand-sdk-{uuid.uuid4().hex[:8]}"
    os.makedirs(target)
    path = os.path.join(target, "motd")
    with open(path, "w") as f:
        f.write("old\n")
    invoke_id = send_file_tea(client, name="motd", target_dir=target, content="new\n", overwrite=False)
    inv, inst = file_result_tea(client, invoke_id)
    assert (inst.invocation_status, inst.error_code, inst.error_info) == ("Failed", "FileAlreadyExists", "File already exists")
    assert inv.invocation_status == "Failed"
    with open(path) as f:
        assert f.read() == "old\n"
    # Overwrite=true replaces it.
    invoke_id = send_file_tea(client, name="motd", target_dir=target, content="new\n", overwrite=True)
    _, inst = file_result_tea(client, invoke_id)
    assert inst.invocation_status == "Success", inst.to_map()
    with open(path) as f:
        assert f.read() == "new\n"


def test_tea_sdk_send_file_bad_owner_is_user_group_not_exists():
    client = tea()
    target = f"/tmp/deckhand-sdk-{uuid.uuid4().hex[:8]}"
    invoke_id = send_file_tea(client, name="x.conf", target_dir=target, content="x", file_owner="deckhand-no-such-user")
    _, inst = file_result_tea(client, invoke_id)
    assert (inst.invocation_status, inst.error_code, inst.error_info) == ("Invalid", "UserGroupNotExists", "Owner not exists")
    invoke_id = send_file_tea(client, name="x.conf", target_dir=target, content="x", file_group="deckhand-no-such-group")
    _, inst = file_result_tea(client, invoke_id)
    assert (inst.invocation_status, inst.error_code, inst.error_info) == ("Invalid", "UserGroupNotExists", "Group not exists")
    assert not os.path.exists(os.path.join(target, "x.conf"))


def test_send_file_refuses_a_symlink_at_the_target():
    client = tea()
    target = f"/tmp/deckhand-sdk-{uuid.uuid4().hex[:8]}"
    os.makedirs(target)
    victim = os.path.join(target, "victim")
    with open(victim, "w") as f:
        f.write("untouched\n")
    os.symlink(victim, os.path.join(target, "link.conf"))
    invoke_id = send_file_tea(client, name="link.conf", target_dir=target, content="pwned\n", overwrite=True)
    _, inst = file_result_tea(client, invoke_id)
    assert (inst.invocation_status, inst.error_code) == ("Failed", "FileCreateFail"), inst.to_map()
    assert "symbolic link" in inst.error_info
    with open(victim) as f:
        assert f.read() == "untouched\n"
    assert os.path.islink(os.path.join(target, "link.conf"))
    # Bad names and paths get Alibaba's codes.
    invoke_id = send_file_tea(client, name="../escape", target_dir=target, content="x")
    _, inst = file_result_tea(client, invoke_id)
    assert (inst.invocation_status, inst.error_code) == ("Invalid", "FileNameInvalid")
    invoke_id = send_file_tea(client, name="ok", target_dir="relative/dir", content="x")
    _, inst = file_result_tea(client, invoke_id)
    assert (inst.invocation_status, inst.error_code) == ("Invalid", "FilePathInvalid")


def test_send_file_content_limit_is_32_kib():
    from Tea.exceptions import TeaException

    with pytest.raises(TeaException) as e:
        send_file_tea(tea(), name="big", target_dir="/tmp", content="x" * (32 * 1024 + 1))
    assert e.value.code == "InvalidParameter.Content"
