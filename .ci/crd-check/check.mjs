// Validates the custom resources in rendered manifests against their operators' CRD schemas,
// two ways, both from the kubernetes-models packages (generated from those CRDs):
//  - the schema's constraints (required fields, types, enums, patterns): the packages' validators;
//  - no unknown field anywhere (a misspelled optional field passes a CRD schema and is silently
//    pruned by the API server): TypeScript's excess-property check of each resource, as an
//    object literal, against the package's type for its kind.
// A custom resource of a kind listed nowhere here fails too: nothing passes unchecked.
//
// Usage: node check.mjs rendered.yaml...   (exit 1 on any error)

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";
import YAML from "yaml";
import * as monitoring from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import * as keda from "@kubernetes-models/keda/keda.sh/v1alpha1";

const here = path.dirname(fileURLToPath(import.meta.url));

// apiVersion/kind -> the model class and where its type is declared.
const KINDS = {
  "monitoring.coreos.com/v1/PodMonitor": [monitoring.PodMonitor, "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1", "IPodMonitor"],
  "monitoring.coreos.com/v1/ServiceMonitor": [monitoring.ServiceMonitor, "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1", "IServiceMonitor"],
  "monitoring.coreos.com/v1/PrometheusRule": [monitoring.PrometheusRule, "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1", "IPrometheusRule"],
  "keda.sh/v1alpha1/ScaledObject": [keda.ScaledObject, "@kubernetes-models/keda/keda.sh/v1alpha1", "IScaledObject"],
  "keda.sh/v1alpha1/TriggerAuthentication": [keda.TriggerAuthentication, "@kubernetes-models/keda/keda.sh/v1alpha1", "ITriggerAuthentication"],
};

// Kubernetes' own groups: kubernetes-validate checks these against the API's schemas.
function builtIn(apiVersion) {
  const group = apiVersion.includes("/") ? apiVersion.split("/")[0] : "";
  return group === "" || !group.includes(".") || group.endsWith(".k8s.io");
}

const errors = [];
const resources = []; // { label, key, doc }

for (const file of process.argv.slice(2)) {
  const docs = YAML.parseAllDocuments(fs.readFileSync(file, "utf8"));
  for (const d of docs) {
    if (d.errors.length) {
      errors.push(`${file}: YAML: ${d.errors[0].message}`);
      continue;
    }
    const doc = d.toJS();
    if (!doc || typeof doc !== "object") continue;
    const label = `${file}: ${doc.kind}/${doc.metadata?.name ?? "?"}`;
    if (builtIn(String(doc.apiVersion ?? ""))) continue;
    const key = `${doc.apiVersion}/${doc.kind}`;
    if (!KINDS[key]) {
      errors.push(`${label}: no CRD schema known for ${key}`);
      continue;
    }
    resources.push({ label, key, doc });
  }
}

// The schema's constraints.
for (const { label, key, doc } of resources) {
  const [Model] = KINDS[key];
  try {
    new Model(doc).validate();
  } catch (e) {
    const details = (e.errors ?? []).map((x) => `${x.instancePath || "/"} ${x.message}`).join("; ");
    errors.push(`${label}: ${details || e.message}`);
  }
}

// Unknown fields: one TypeScript file, a typed constant per resource.
if (resources.length) {
  const lines = [];
  const owner = []; // line -> resource label
  const imports = new Map();
  for (const { key } of resources) {
    const [, module, type] = KINDS[key];
    imports.set(type, module);
  }
  for (const [type, module] of imports) {
    lines.push(`import type { ${type} } from "${module}";`);
    owner.push(null);
  }
  resources.forEach(({ label, key, doc }, i) => {
    const body = `export const r${i}: ${KINDS[key][2]} = ${JSON.stringify(doc, null, 1)};`.split("\n");
    for (const l of body) {
      lines.push(l);
      owner.push(label);
    }
  });
  const source = path.join(here, `.check-${process.pid}.ts`);
  fs.writeFileSync(source, lines.join("\n") + "\n");
  try {
    const program = ts.createProgram([source], {
      strict: true,
      noEmit: true,
      skipLibCheck: true,
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.ESNext,
      moduleResolution: ts.ModuleResolutionKind.Bundler,
    });
    for (const diag of ts.getPreEmitDiagnostics(program)) {
      const text = ts.flattenDiagnosticMessageText(diag.messageText, " ");
      if (!diag.file || path.resolve(diag.file.fileName) !== source) {
        errors.push(`type check: ${text}`);
        continue;
      }
      const { line } = diag.file.getLineAndCharacterOfPosition(diag.start ?? 0);
      const at = lines[line].trim().slice(0, 80);
      errors.push(`${owner[line] ?? source}: ${text} (at ${at})`);
    }
  } finally {
    fs.rmSync(source, { force: true });
  }
}

for (const e of errors) console.error(e);
if (errors.length) process.exit(1);
console.log(`${resources.length} custom resources valid against their CRD schemas, no unknown fields`);
