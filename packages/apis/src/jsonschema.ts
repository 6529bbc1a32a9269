import { Ajv, type ValidateFunction } from 'ajv';

/**
 * JSON Schemas of `jsonSchema` plugins (`inline`: the schema as JSON text), compiled once per
 * distinct text. Pure; shared by the apply-time check and the proxy's request path.
 */
const ajv = new Ajv({ allErrors: false, strict: false });
const compiled = new Map<string, ValidateFunction>();
const maxCached = 1000;

/** Why `value` does not match, as `"/path must be integer"`; undefined when it matches. */
export type JsonSchemaCheck = (value: unknown) => string | undefined;

/** Compiles a schema; throws an Error whose message says what is wrong with it. */
export function compileJsonSchema(text: string): JsonSchemaCheck {
  let validate = compiled.get(text);
  if (!validate) {
    let schema: unknown;
    try {
      schema = JSON.parse(text);
    } catch (err) {
      throw new Error(`not JSON: ${(err as Error).message}`);
    }
    if (schema === null || (typeof schema !== 'object' && typeof schema !== 'boolean')) throw new Error('a JSON Schema is an object (or true/false)');
    validate = ajv.compile(schema as object);
    if (compiled.size >= maxCached) compiled.clear();
    compiled.set(text, validate);
  }
  const v = validate;
  return (value) => {
    if (v(value)) return undefined;
    const e = v.errors?.[0];
    return e ? `${e.instancePath || '(the body)'} ${e.message ?? 'does not match'}` : 'does not match the schema';
  };
}
