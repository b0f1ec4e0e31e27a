"""Per-key permissions and the audit trail (issue #18), driven by the
official Alibaba Cloud Python SDKs against a real hub and two real agents.

Run by tests/sdk_python.rs (`official_python_sdks_obey_key_policies`);
configuration from the environment:
  DECKHAND_ENDPOINT, DECKHAND_CA    the hub (HTTPS) and its CA
  DECKHAND_AK / DECKHAND_SK         a hub.toml key (full access)
  DECKHAND_STAGING / DECKHAND_PROD  two registered, online instances
The management and audit calls are deckhand extensions, sent with the
classic SDK's CommonRequest exactly as a user would.
"""

import base64
import json
import time
import os
import uuid

import pytest

from aliyunsdkcore.client import AcsClient
from aliyunsdkcore.acs_exception.exceptions import ServerException
from aliyunsdkcore.request import CommonRequest
from aliyunsdkecs.request.v20140526 import (
    CreateCommandRequest,
    DescribeInvocationResultsRequest,
    DescribeInvocationsRequest,
    InvokeCommandRequest,
    RunCommandRequest,
    TagResourcesRequest,
)
from alibabacloud_ecs20140526.client import Client as EcsClient
from alibabacloud_ecs20140526 import models as ecs
from alibabacloud_tea_openapi import models as open_api
from alibabacloud_tea_util import models as util
from Tea.exceptions import TeaException

ENDPOINT = os.environ["DECKHAND_ENDPOINT"]
CA = os.environ["DECKHAND_CA"]
ROOT = (os.environ["DECKHAND_AK"], os.environ["DECKHAND_SK"])
STAGING = os.environ["DECKHAND_STAGING"]
PROD = os.environ["DECKHAND_PROD"]
FINAL = {"Finished", "Failed", "Stopped"}
RUNTIME = util.RuntimeOptions(ca=CA)


def call(req, key=ROOT):
    req.set_endpoint(ENDPOINT)
    req.set_protocol_type("https")
    return json.loads(AcsClient(key[0], key[1], "cn-hangzhou", verify=CA).do_action_with_exception(req))


def extension(action, key=ROOT, **params):
    req = CommonRequest(domain=ENDPOINT, version="2014-05-26", action_name=action)
    req.set_method("POST")
    for k, v in params.items():
        req.add_query_param(k, v)
    return call(req, key)


def refused(fn):
    with pytest.raises(ServerException) as e:
        fn()
    return e.value


def new_key(policy):
    doc = json.dumps(policy)
    res = extension("CreateAccessKey", Description="sdk test", PolicyDocument=doc)
    return (res["AccessKeyId"], res["AccessKeySecret"])


def run(key, instances, script="echo ok", **extra):
    req = RunCommandRequest.RunCommandRequest()
    req.set_Type("RunShellScript")
    req.set_CommandContent(script)
    req.set_InstanceIds(instances)
    for k, v in extra.items():
        getattr(req, "set_" + k)(v)
    return call(req, key)


def invoke(key, command_id, instances, parameters=None):
    req = InvokeCommandRequest.InvokeCommandRequest()
    req.set_CommandId(command_id)
    req.set_InstanceIds(instances)
    if parameters is not None:
        req.set_Parameters(json.dumps(parameters))
    return call(req, key)


def wait_final(invoke_id, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        req = DescribeInvocationResultsRequest.DescribeInvocationResultsRequest()
        req.set_InvokeId(invoke_id)
        results = call(req)["Invocation"]["InvocationResults"]["InvocationResult"]
        if results and all(r["InvokeRecordStatus"] in FINAL for r in results):
            return results
        time.sleep(0.2)
    raise AssertionError(f"{invoke_id} not final after {timeout}s")


def audit(key_id, action=None):
    params = {"UserAccessKeyId": key_id, "MaxResults": "100"}
    if action:
        params["AuditAction"] = action
    return extension("DescribeAuditEvents", **params)["AuditEvents"]["AuditEvent"]


@pytest.fixture(scope="module", autouse=True)
def tagged():
    for inst, env in ((STAGING, "staging"), (PROD, "prod")):
        t = TagResourcesRequest.TagResourcesRequest()
        t.set_ResourceType("instance")
        t.set_ResourceIds([inst])
        t.set_Tags([{"Key": "env", "Value": env}])
        call(t)


def assert_forbidden(err, action, instance=None):
    assert err.get_error_code() == "Forbidden.RAM", err
    assert err.get_http_status() == 403
    assert action in err.get_error_msg()
    if instance:
        assert instance in err.get_error_msg()


def test_describe_only_key_cannot_run_command_in_either_sdk():
    key = new_key({"Version": "1", "Statement": [{"Effect": "Allow", "Action": "Describe*"}]})
    assert "Invocations" in call(DescribeInvocationsRequest.DescribeInvocationsRequest(), key)
    assert_forbidden(refused(lambda: run(key, [STAGING])), "RunCommand")
    # The tea SDK signs with ACS3-HMAC-SHA256: same key, same refusal.
    cfg = open_api.Config(access_key_id=key[0], access_key_secret=key[1], endpoint=ENDPOINT, protocol="https", region_id="cn-hangzhou")
    with pytest.raises(TeaException) as e:
        EcsClient(cfg).run_command_with_options(ecs.RunCommandRequest(region_id="cn-hangzhou", type="RunShellScript", command_content="true", instance_id=[STAGING]), RUNTIME)
    assert e.value.code == "Forbidden.RAM"
    events = audit(key[0], "RunCommand")
    assert len(events) == 2 and all(ev["Outcome"] == "Forbidden.RAM" and ev["Targets"] == STAGING for ev in events), events
    # A read that succeeds changes nothing and is not recorded.
    assert audit(key[0], "DescribeInvocations") == []


def test_staging_key_cannot_reach_prod_by_id_or_tag():
    key = new_key({"Statement": [{"Effect": "Allow", "Action": ["RunCommand", "Describe*"], "Instance": "tag:env=staging"}]})
    ok = run(key, [STAGING], "echo staging-ok")
    r = wait_final(ok["InvokeId"])[0]
    assert base64.b64decode(r["Output"]) == b"staging-ok\n"
    e = refused(lambda: run(key, [PROD]))
    assert_forbidden(e, "RunCommand", PROD)
    # Mixed targets: the whole call is refused, nothing runs anywhere.
    before = call(DescribeInvocationsRequest.DescribeInvocationsRequest())["TotalCount"]
    assert_forbidden(refused(lambda: run(key, [STAGING, PROD])), "RunCommand", PROD)
    assert call(DescribeInvocationsRequest.DescribeInvocationsRequest())["TotalCount"] == before
    # By tag: a call selecting instances by tag names none the key is
    # scoped to, so it is refused (never silently narrowed to staging).
    by_tag = RunCommandRequest.RunCommandRequest()
    by_tag.set_Type("RunShellScript")
    by_tag.set_CommandContent("echo no")
    by_tag.set_Tags([{"Key": "env", "Value": "prod"}])
    assert_forbidden(refused(lambda: call(by_tag, key)), "RunCommand")
    assert call(DescribeInvocationsRequest.DescribeInvocationsRequest())["TotalCount"] == before
    # Listings: naming its own invocation or instance reads it; a listing
    # naming nothing (the whole fleet's results, prod's output included)
    # is refused, not silently narrowed.
    mine = DescribeInvocationResultsRequest.DescribeInvocationResultsRequest()
    mine.set_InvokeId(ok["InvokeId"])
    assert call(mine, key)["Invocation"]["TotalCount"] == 1
    assert_forbidden(refused(lambda: call(DescribeInvocationResultsRequest.DescribeInvocationResultsRequest(), key)), "DescribeInvocationResults")
    assert_forbidden(refused(lambda: call(DescribeInvocationsRequest.DescribeInvocationsRequest(), key)), "DescribeInvocations")
    events = audit(key[0], "RunCommand")
    outcomes = sorted((ev["Outcome"], ev["InvokeId"]) for ev in events)
    assert outcomes == sorted([("Success", ok["InvokeId"])] + [("Forbidden.RAM", "")] * 3), events
    assert all(ev["SourceIp"] == "127.0.0.1" and ev["RequestId"] for ev in events)


def test_saved_commands_only_key():
    c = CreateCommandRequest.CreateCommandRequest()
    c.set_Name("greet-" + uuid.uuid4().hex[:6])
    c.set_Type("RunShellScript")
    c.set_CommandContent(base64.b64encode(b"echo hello {{who}}").decode())
    c.set_EnableParameter(True)
    command_id = call(c)["CommandId"]
    other = CreateCommandRequest.CreateCommandRequest()
    other.set_Name("other")
    other.set_Type("RunShellScript")
    other.set_CommandContent(base64.b64encode(b"id").decode())
    other_id = call(other)["CommandId"]
    key = new_key({"Statement": [{"Effect": "Allow", "Action": "InvokeCommand", "CommandId": [command_id]}, {"Effect": "Allow", "Action": "Describe*"}]})
    res = invoke(key, command_id, [STAGING], {"who": "ci-bot"})
    r = wait_final(res["InvokeId"])[0]
    assert base64.b64decode(r["Output"]) == b"hello ci-bot\n"
    assert_forbidden(refused(lambda: run(key, [STAGING])), "RunCommand")
    assert_forbidden(refused(lambda: invoke(key, other_id, [STAGING])), "InvokeCommand")
    # Shell text through a parameter: strict values apply to this key by
    # default, though the hub's own setting is "any".
    e = refused(lambda: invoke(key, command_id, [STAGING], {"who": "x; touch /tmp/pwned"}))
    assert e.get_error_code() == "InvalidParameter.Parameters" and e.get_http_status() == 400
    # The root key (hub.toml, full access) keeps Cloud Assistant's rule.
    wait_final(invoke(ROOT, command_id, [STAGING], {"who": "a b"})["InvokeId"])
    events = audit(key[0], "InvokeCommand")
    assert sorted(ev["Outcome"] for ev in events) == ["Forbidden.RAM", "InvalidParameter.Parameters", "Success"], events
    assert [ev["InvokeId"] for ev in events if ev["Outcome"] == "Success"] == [res["InvokeId"]]


def test_disabled_key_is_refused_at_once_and_audited():
    key = new_key({"Statement": [{"Effect": "Allow", "Action": "Describe*"}]})
    call(DescribeInvocationsRequest.DescribeInvocationsRequest(), key)
    extension("DisableAccessKey", UserAccessKeyId=key[0])
    e = refused(lambda: call(DescribeInvocationsRequest.DescribeInvocationsRequest(), key))
    assert e.get_error_code() == "InvalidAccessKeyId.Inactive" and e.get_http_status() == 403
    listed = extension("DescribeAccessKeys", UserAccessKeyId=key[0])["AccessKeys"]["AccessKey"]
    assert [k["Status"] for k in listed] == ["Inactive"] and "AccessKeySecret" not in listed[0]
    assert [ev["Outcome"] for ev in audit(key[0])] == ["InvalidAccessKeyId.Inactive"]
    extension("EnableAccessKey", UserAccessKeyId=key[0])
    call(DescribeInvocationsRequest.DescribeInvocationsRequest(), key)
    extension("DeleteAccessKey", UserAccessKeyId=key[0])
    assert refused(lambda: call(DescribeInvocationsRequest.DescribeInvocationsRequest(), key)).get_error_code() == "InvalidAccessKeyId.NotFound"


def test_new_key_without_policy_has_no_access_and_management_is_audited():
    res = extension("CreateAccessKey", Description="empty")
    key = (res["AccessKeyId"], res["AccessKeySecret"])
    assert_forbidden(refused(lambda: call(DescribeInvocationsRequest.DescribeInvocationsRequest(), key)), "DescribeInvocations")
    # A key cannot manage keys unless its policy says so.
    assert_forbidden(refused(lambda: extension("CreateAccessKey", key=key)), "CreateAccessKey")
    bad = refused(lambda: extension("SetAccessKeyPolicy", UserAccessKeyId=key[0], PolicyDocument='{"Statement":[{"Effect":"Maybe","Action":"*"}]}'))
    assert bad.get_error_code() == "InvalidParameter.PolicyDocument"
    extension("SetAccessKeyPolicy", UserAccessKeyId=key[0], PolicyDocument=json.dumps({"Statement": [{"Effect": "Allow", "Action": "Describe*"}]}))
    call(DescribeInvocationsRequest.DescribeInvocationsRequest(), key)
    mine = audit(ROOT[0], "SetAccessKeyPolicy")
    assert {(ev["Outcome"], ev["Targets"]) for ev in mine} >= {("Success", key[0]), ("InvalidParameter.PolicyDocument", key[0])}, mine
