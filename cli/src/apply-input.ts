import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { PosternError, locateIssue, parseResources, unsupportedFeatures, type AnyResource, type DecodedDocument, type Issue } from '@postern/apis';
import { celIssues } from '@postern/policy';
import type { Io } from './io.js';

export interface ApplyInput {
  resources: AnyResource[];
  /** Where each resource came from, by position, to turn server issues into file:line. */
  docs: DecodedDocument[];
}

function filesUnder(path: string): string[] {
  if (!statSync(path).isDirectory()) return [path];
  return readdirSync(path)
    .sort()
    .flatMap((name) => {
      const p = join(path, name);
      if (statSync(p).isDirectory()) return filesUnder(p);
      return /\.(ya?ml|json)$/i.test(name) ? [p] : [];
    });
}

/**
 * Reads every resource from files, folders (recursively: .yaml, .yml, .json) or `-` (stdin),
 * and validates all of them here first, so a typo is reported with file:line before anything
 * is sent. Throws one error listing every problem.
 */
export async function readApplyInput(io: Io, paths: readonly string[]): Promise<ApplyInput> {
  const resources: AnyResource[] = [];
  const docs: DecodedDocument[] = [];
  const issues: Issue[] = [];
  for (const p of paths) {
    const sources: { text: string; name: string }[] = [];
    if (p === '-') sources.push({ text: await io.readStdin(), name: '<stdin>' });
    else {
      const abs = resolve(io.cwd, p);
      let files: string[];
      try {
        files = filesUnder(abs);
      } catch {
        throw new PosternError('ERR_USAGE', `cannot read ${p}: no such file or folder`);
      }
      if (files.length === 0) throw new PosternError('ERR_USAGE', `${p} holds no .yaml, .yml or .json files`);
      for (const f of files) sources.push({ text: readFileSync(f, 'utf8'), name: relative(io.cwd, f) || f });
    }
    for (const src of sources) {
      const parsed = parseResources(src.text, src.name);
      issues.push(...parsed.issues);
      for (const { resource, doc } of parsed.resources) {
        issues.push(...[...celIssues(resource), ...unsupportedFeatures(resource)].map((i) => locateIssue(doc, i)));
        resources.push(resource);
        docs.push(doc);
      }
    }
  }
  if (issues.length) throw PosternError.fromIssues(issues);
  if (resources.length === 0) throw new PosternError('ERR_USAGE', 'nothing to apply: the input holds no resources');
  return { resources, docs };
}

/** Server issues name a document by its index in the request; point them at file:line instead. */
export function locateServerIssues(err: unknown, input: ApplyInput): unknown {
  if (!(err instanceof PosternError) || err.issues.length === 0) return err;
  const issues = err.issues.map((i) => {
    const doc = i.document !== undefined ? input.docs[i.document] : undefined;
    const segments = (i as Issue & { segments?: (string | number)[] }).segments;
    if (!doc) return i;
    const located = locateIssue(doc, { code: i.code, message: i.message, path: i.path ?? '', segments: segments ?? [] });
    return located;
  });
  return PosternError.fromIssues(issues);
}
