"""A client generated from openapi.json (openapi-python-client) against a live server: submit a
job, read it back and list it through the generated models (.ci/contract.sh runs it)."""
import sys
import time

sys.path.insert(0, sys.argv[1])
base_url, token = sys.argv[2], sys.argv[3]

from headroom_client import AuthenticatedClient  # noqa: E402
from headroom_client.api.jobs import jobs_get_one, jobs_list, jobs_submit  # noqa: E402
from headroom_client.models import Job, JobList, JobRequestSubmission, JobSubmission  # noqa: E402

client = AuthenticatedClient(base_url=base_url, token=token)
submission = JobSubmission(
    upstream="crm",
    tenant="acme",
    request=JobRequestSubmission(method="GET", path="/crm/v3/objects/contacts/1"),
)
job = jobs_submit.sync(client=client, body=submission)
assert isinstance(job, Job), f"submit answered {job!r}"
for _ in range(100):
    got = jobs_get_one.sync(client=client, id=job.id)
    assert isinstance(got, Job), f"get answered {got!r}"
    if got.status.value == "succeeded":
        break
    time.sleep(0.1)
assert got.status.value == "succeeded", f"the job is {got.status.value}"
assert got.response.status == 200, got.response
page = jobs_list.sync(client=client, tenant="acme")
assert isinstance(page, JobList) and any(j.id == job.id for j in page.jobs), page
print(f"generated client: job {job.id} submitted, {got.status.value}, listed")
