// Drives flexsync with FlexPrice's official TypeScript SDK, as a FlexPrice user's code would.
// Env: FLEXSYNC_URL (e.g. http://127.0.0.1:8000/v1) and FLEXSYNC_KEY (an API key).
// Prints one JSON object per step on stdout: {"step": ..., "result": ...} for a call that succeeded,
// {"step": ..., "error": {...}} for a deliberate error. Any unexpected failure prints
// {"step": ..., "unexpected": {...}} and exits 1. tests/test_flexprice_sdk.py reads the lines.
import { Flexprice } from "@flexprice/sdk";

const serverURL = process.env.FLEXSYNC_URL;
const apiKey = process.env.FLEXSYNC_KEY;
if (!serverURL || !apiKey) {
  console.error("set FLEXSYNC_URL and FLEXSYNC_KEY");
  process.exit(2);
}
const externalId = process.env.FLEXSYNC_EXTERNAL_ID ?? "sdk-customer-1";
const fp = new Flexprice({ serverURL, apiKeyAuth: apiKey });

function describe(e) {
  return {
    name: e?.name,
    statusCode: e?.statusCode,
    message: e?.message,
    issues: e?.cause?.issues,
  };
}

function print(line) {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

async function step(name, call) {
  try {
    const result = await call();
    print({ step: name, result: result ?? null });
    return result;
  } catch (e) {
    print({ step: name, unexpected: describe(e) });
    process.exit(1);
  }
}

async function expectError(name, call) {
  let result;
  try {
    result = await call();
  } catch (e) {
    print({ step: name, error: describe(e) });
    return;
  }
  print({ step: name, unexpected: { message: "expected an error, got a result", result } });
  process.exit(1);
}

const created = await step("create", () =>
  fp.customers.createCustomer({
    externalId,
    name: "Grace Hopper",
    email: "grace@example.com",
    metadata: { plan: "pro", source: "sdk" },
    addressLine1: "1 Compiler Way",
    addressLine2: "Suite 2",
    addressCity: "Arlington",
    addressState: "VA",
    addressPostalCode: "22201",
    addressCountry: "us",
  }),
);
const id = created.id;
// Only the required fields: every optional field comes back null, which the SDK must accept.
await step("create_minimal", () =>
  fp.customers.createCustomer({ externalId: `${externalId}-minimal`, name: "Minimal" }),
);

await step("get", () => fp.customers.getCustomer(id));
await step("get_by_external_id", () => fp.customers.getCustomerByExternalId(externalId));
await step("query_by_external_id", () => fp.customers.queryCustomer({ externalId, limit: 10, offset: 0 }));
await step("query_by_ids", () => fp.customers.queryCustomer({ customerIds: [id] }));
await step("update_by_id", () =>
  fp.customers.updateCustomer({ name: "Rear Admiral Hopper", metadata: { plan: "enterprise" } }, id),
);
await step("update_by_external_id", () =>
  fp.customers.updateCustomer({ email: "hopper@example.com" }, undefined, externalId),
);
await expectError("create_duplicate", () =>
  fp.customers.createCustomer({ externalId, name: "Someone else" }),
);
await expectError("create_bad_email", () =>
  fp.customers.createCustomer({ externalId: `${externalId}-bad`, name: "Bad Email", email: "not-an-email" }),
);
await step("delete", () => fp.customers.deleteCustomer(id));
await step("get_archived", () => fp.customers.getCustomer(id));
