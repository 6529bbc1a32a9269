import { LineCounter, parseAllDocuments, isMap, isPair, isScalar, isSeq, stringify, type Document, type Node } from 'yaml';
import type { Issue } from './errors.js';
import { formatPath, validateResource, type PathSegment, type ValidationIssue } from './validate.js';
import type { AnyResource } from './kinds/index.js';

/** One resource found in a source text, with a way to find where any of its fields was written. */
export interface DecodedDocument {
  value: unknown;
  /** Index among the resources of the source, from 0. */
  index: number;
  file?: string;
  /** Line and column (1-based) of a path inside this resource; the nearest existing parent if the path is absent. */
  locate(path: readonly PathSegment[], atKey?: boolean): { line: number; column: number };
}

export interface DecodeResult {
  documents: DecodedDocument[];
  issues: Issue[];
}

function nodeAt(doc: Document, path: readonly PathSegment[], atKey: boolean): Node | undefined {
  let node: unknown = doc.contents;
  let lastGood: Node | undefined = (doc.contents as Node | null) ?? undefined;
  for (let i = 0; i < path.length; i++) {
    const seg = path[i];
    const last = i === path.length - 1;
    if (isMap(node)) {
      const pair = node.items.find((p) => isPair(p) && isScalar(p.key) && p.key.value === seg);
      if (!pair) return lastGood;
      if (last && atKey) return pair.key as Node;
      node = pair.value;
      lastGood = (pair.value as Node | null) ?? (pair.key as Node);
    } else if (isSeq(node) && typeof seg === 'number') {
      node = node.items[seg];
      if (!node) return lastGood;
      lastGood = node as Node;
    } else {
      return lastGood;
    }
  }
  return lastGood;
}

/**
 * Decodes a multi-document YAML (or JSON) text. A document that is a list, or `kind: List` with
 * `items`, contributes each element as a resource. Syntax errors become issues with line and column.
 */
export function decodeDocuments(text: string, file?: string): DecodeResult {
  const lineCounter = new LineCounter();
  const docs = parseAllDocuments(text, { lineCounter, uniqueKeys: true, prettyErrors: false });
  const issues: Issue[] = [];
  const documents: DecodedDocument[] = [];
  const all = Array.isArray(docs) ? docs : [];
  for (const doc of all) {
    if (doc.errors.length > 0) {
      for (const err of doc.errors) {
        const pos = lineCounter.linePos(err.pos[0]);
        issues.push({ code: 'ERR_SYNTAX', message: err.message.split('\n')[0] ?? err.message, line: pos.line, column: pos.col, ...(file ? { file } : {}) });
      }
      continue;
    }
    const value = doc.toJS({ maxAliasCount: 100 }) as unknown;
    if (value === null || value === undefined) continue;
    const locateIn = (prefix: PathSegment[]) => (path: readonly PathSegment[], atKey = false) => {
      const node = nodeAt(doc, [...prefix, ...path], atKey);
      const offset = node?.range?.[0] ?? 0;
      const pos = lineCounter.linePos(offset);
      return { line: pos.line, column: pos.col };
    };
    const push = (v: unknown, prefix: PathSegment[]) =>
      documents.push({ value: v, index: documents.length, ...(file ? { file } : {}), locate: locateIn(prefix) });
    if (Array.isArray(value)) value.forEach((v, i) => push(v, [i]));
    else if (typeof value === 'object' && (value as { kind?: unknown }).kind === 'List' && Array.isArray((value as { items?: unknown }).items)) {
      ((value as { items: unknown[] }).items).forEach((v, i) => push(v, ['items', i]));
    } else push(value, []);
  }
  return { documents, issues };
}

/** A validation issue with the file, line and column of the field it is about. */
export function locateIssue(doc: DecodedDocument, issue: ValidationIssue): Issue {
  const { line, column } = doc.locate(issue.segments, issue.atKey ?? false);
  return {
    code: issue.code,
    message: issue.message,
    path: issue.path ?? formatPath(issue.segments),
    document: doc.index,
    line,
    column,
    ...(doc.file ? { file: doc.file } : {}),
  };
}

export interface ParsedResources {
  resources: { resource: AnyResource; doc: DecodedDocument }[];
  issues: Issue[];
}

/** Decodes and validates every resource in a text; reports all problems of all documents at once. */
export function parseResources(text: string, file?: string): ParsedResources {
  const decoded = decodeDocuments(text, file);
  const issues: Issue[] = [...decoded.issues];
  const resources: ParsedResources['resources'] = [];
  for (const doc of decoded.documents) {
    const result = validateResource(doc.value);
    issues.push(...result.issues.map((i) => locateIssue(doc, i)));
    if (result.resource) resources.push({ resource: result.resource, doc });
  }
  issues.sort((a, b) => (a.line ?? 0) - (b.line ?? 0) || (a.column ?? 0) - (b.column ?? 0));
  return { resources, issues };
}

/** YAML text of resources, `---` between documents. */
export function encodeYaml(resources: readonly unknown[]): string {
  return resources.map((r) => stringify(r, { lineWidth: 0 })).join('---\n');
}
