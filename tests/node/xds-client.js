#!/usr/bin/env node
// node-soap (npm "soap") as a Document Consumer / Source of the XDS.b server, for
// tests/test_interop_node.py. It reads the server's standard WSDL and prints one JSON
// object on stdout; the Python test asserts on it.
//
//   node xds-client.js query    <registry WSDL URL> <patientId>
//   node xds-client.js register <registry WSDL URL> <patientId> <uniqueId> <repositoryUniqueId>
//   node xds-client.js retrieve <repository WSDL URL> <repositoryUniqueId> <uniqueId>...
'use strict';

const soap = require('soap');

const FIND_DOCUMENTS = 'urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d';
const APPROVED = 'urn:oasis:names:tc:ebxml-regrep:StatusType:Approved';
const DE_UNIQUE_ID = 'urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab';
const DE_PATIENT_ID = 'urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427';
const SS_UNIQUE_ID = 'urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8';
const SS_SOURCE_ID = 'urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832';
const SS_PATIENT_ID = 'urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446';
const SS_NODE = 'urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd';
const SS_AUTHOR = 'urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d';
const DE_AUTHOR = 'urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d';
const HAS_MEMBER = 'urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember';
const STABLE = 'urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1';
const CODE = {
  class: ['urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a', '11488-4', '2.16.840.1.113883.6.1', 'Consult note'],
  conf: ['urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f', 'N', '2.16.840.1.113883.5.25', 'Normal'],
  format: ['urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d', 'urn:ihe:pcc:xphr:2007', '1.3.6.1.4.1.19376.1.2.3', 'PHR Extract'],
  hcft: ['urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1', 'SA', '1.2.250.1.213.1.1.4.9', 'Secteur ambulatoire'],
  practice: ['urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead', 'ETABLISSEMENT', '1.2.250.1.213.1.1.4.9', 'Etablissement de sante'],
  type: ['urn:uuid:f0306f51-975f-434e-a61c-c59651d33983', '34133-9', '2.16.840.1.113883.6.1', 'Summary of episode note'],
  content: ['urn:uuid:aa543740-bdda-424e-8c96-df4873be8500', '04', '1.2.250.1.213.1.1.4.12', 'Hospitalisation'],
};

// node-soap gives one child as an object and several as an array.
const list = (x) => (x === undefined || x === null ? [] : Array.isArray(x) ? x : [x]);

const slot = (name, ...values) => ({ attributes: { name }, ValueList: { Value: values } });
const text = (value) => ({ LocalizedString: { attributes: { value } } });
const code = (key, obj) => {
  const [scheme, value, codingScheme, display] = CODE[key];
  return { attributes: { id: `${obj}-${key}`, classificationScheme: scheme, classifiedObject: obj, nodeRepresentation: value },
           Slot: [slot('codingScheme', codingScheme)], Name: text(display) };
};
const extId = (scheme, obj, id, value, label) =>
  ({ attributes: { id, registryObject: obj, identificationScheme: scheme, value }, Name: text(label) });

function slots(obj) {
  const out = {};
  for (const s of list(obj.Slot)) out[s.attributes.name] = list(s.ValueList && s.ValueList.Value);
  return out;
}

function extValue(obj, scheme) {
  const found = list(obj.ExternalIdentifier).find((e) => e.attributes.identificationScheme === scheme);
  return found ? found.attributes.value : null;
}

function errors(response) {
  return list(response.RegistryErrorList && response.RegistryErrorList.RegistryError)
    .map((e) => ({ errorCode: e.attributes.errorCode, text: e.$value || '' }));
}

async function query(wsdl, patientId) {
  const client = await soap.createClientAsync(wsdl, { forceSoap12Headers: true });
  const [answer] = await client.DocumentRegistry_RegistryStoredQueryAsync({
    ResponseOption: { attributes: { returnType: 'LeafClass' } },
    AdhocQuery: {
      attributes: { id: FIND_DOCUMENTS },
      Slot: [slot('$XDSDocumentEntryPatientId', `'${patientId}'`), slot('$XDSDocumentEntryStatus', `('${APPROVED}')`)],
    },
  });
  const entries = list(answer.RegistryObjectList && answer.RegistryObjectList.ExtrinsicObject).map((eo) => {
    const s = slots(eo);
    return {
      id: eo.attributes.id, mimeType: eo.attributes.mimeType, status: eo.attributes.status,
      uniqueId: extValue(eo, DE_UNIQUE_ID), patientId: extValue(eo, DE_PATIENT_ID),
      size: s.size, hash: s.hash, repositoryUniqueId: s.repositoryUniqueId,
      title: eo.Name ? list(eo.Name.LocalizedString).map((l) => l.attributes.value) : [],
    };
  });
  return { status: answer.attributes.status, errors: errors(answer), entries };
}

async function register(wsdl, patientId, uniqueId, repositoryUniqueId) {
  const client = await soap.createClientAsync(wsdl, { forceSoap12Headers: true });
  const de = 'Document01';
  const ss = 'SubmissionSet01';
  const request = {
    RegistryObjectList: {
      RegistryPackage: {
        attributes: { id: ss, objectType: 'urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:RegistryPackage' },
        Slot: [slot('submissionTime', '20240101120000')],
        Name: text('node-soap submission'),
        Classification: [
          { attributes: { id: 'ss-author', classificationScheme: SS_AUTHOR,
                          classifiedObject: ss, nodeRepresentation: '' },
            Slot: [slot('authorPerson', '123^Martin^Paul')] },
          code('content', ss),
        ],
        ExternalIdentifier: [
          extId(SS_UNIQUE_ID, ss, 'ss-uid', `${uniqueId}.1`, 'XDSSubmissionSet.uniqueId'),
          extId(SS_SOURCE_ID, ss, 'ss-src', '1.2.250.1.999.7', 'XDSSubmissionSet.sourceId'),
          extId(SS_PATIENT_ID, ss, 'ss-pid', patientId, 'XDSSubmissionSet.patientId'),
        ],
      },
      ExtrinsicObject: {
        attributes: { id: de, mimeType: 'text/plain', objectType: STABLE },
        Slot: [slot('creationTime', '20240101120000'), slot('languageCode', 'fr-FR'),
               slot('sourcePatientId', patientId), slot('hash', 'da39a3ee5e6b4b0d3255bfef95601890afd80709'),
               slot('size', '0'), slot('repositoryUniqueId', repositoryUniqueId)],
        Name: text('node-soap document'),
        Classification: [
          { attributes: { id: 'de-author', classificationScheme: DE_AUTHOR,
                          classifiedObject: de, nodeRepresentation: '' },
            Slot: [slot('authorPerson', '123^Martin^Paul^^^^^^&1.2.250.1.71.4.2.1&ISO')] },
          ...['class', 'conf', 'format', 'hcft', 'practice', 'type'].map((k) => code(k, de)),
        ],
        ExternalIdentifier: [
          extId(DE_PATIENT_ID, de, 'de-pid', patientId, 'XDSDocumentEntry.patientId'),
          extId(DE_UNIQUE_ID, de, 'de-uid', uniqueId, 'XDSDocumentEntry.uniqueId'),
        ],
      },
      Classification: { attributes: { id: 'ss-node', classifiedObject: ss, classificationNode: SS_NODE } },
      Association: {
        attributes: { id: 'ss-de', associationType: HAS_MEMBER, sourceObject: ss, targetObject: de },
        Slot: [slot('SubmissionSetStatus', 'Original')],
      },
    },
  };
  // node-soap makes no ...Async method for an operation whose name is not a JavaScript identifier.
  const answer = await new Promise((resolve, reject) => {
    client['DocumentRegistry_RegisterDocumentSet-b'](request, (err, result) => (err ? reject(err) : resolve(result)));
  });
  return { status: answer.attributes.status, errors: errors(answer) };
}

async function retrieve(wsdl, repositoryUniqueId, uniqueIds) {
  // parseReponseAttachments (sic: node-soap's spelling) makes it split the MTOM answer; the
  // xop:Include left in each Document names its part, matched here by Content-ID.
  const client = await soap.createClientAsync(wsdl, { forceSoap12Headers: true, parseReponseAttachments: true });
  const [answer] = await client.DocumentRepository_RetrieveDocumentSetAsync({
    DocumentRequest: uniqueIds.map((uid) => ({ RepositoryUniqueId: repositoryUniqueId, DocumentUniqueId: uid })),
  });
  const parts = new Map();
  for (const part of (client.lastResponseAttachments || { parts: [] }).parts) {
    parts.set((part.headers['content-id'] || '').replace(/^<|>$/g, ''), part.body);
  }
  const documents = list(answer.DocumentResponse).map((dr) => {
    const href = dr.Document && dr.Document.Include ? dr.Document.Include.attributes.href : '';
    const body = parts.get(decodeURIComponent(href.replace(/^cid:/, '')));
    return { uniqueId: dr.DocumentUniqueId, mimeType: dr.mimeType, base64: body ? body.toString('base64') : null };
  });
  const rr = answer.RegistryResponse;
  return { status: rr.attributes.status, errors: errors(rr), documents };
}

async function main(argv) {
  const [command, wsdl, ...args] = argv;
  if (command === 'query' && args.length === 1) return query(wsdl, args[0]);
  if (command === 'register' && args.length === 3) return register(wsdl, ...args);
  if (command === 'retrieve' && args.length >= 2) return retrieve(wsdl, args[0], args.slice(1));
  throw new Error('usage: xds-client.js query|register|retrieve <WSDL URL> ...');
}

main(process.argv.slice(2)).then(
  (result) => { process.stdout.write(JSON.stringify(result) + '\n'); },
  (err) => { process.stderr.write(`${err && err.stack ? err.stack : err}\n`); process.exit(1); },
);
