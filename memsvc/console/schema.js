// JSON Schemas (as the OpenAPI document writes them) shown as a readable tree, and an example value built
// from one, for the API reference's "try it" forms. References to components are links to their sections.

import {h} from './dom.js';

const COMPONENTS = '#/components/schemas/';

export function componentAnchor(name) {
  return `schema-${name}`;
}

function refName(ref) {
  return ref.startsWith(COMPONENTS) ? ref.slice(COMPONENTS.length) : ref;
}

/** What a schema takes, in a few words: its type and its bounds. */
function summary(schema) {
  const parts = [];
  if (schema.enum) parts.push(schema.enum.map((value) => JSON.stringify(value)).join(' | '));
  else if (schema.const !== undefined) parts.push(JSON.stringify(schema.const));
  else if (schema.type) parts.push([schema.type].flat().join(' | '));
  if (schema.format) parts.push(`(${schema.format})`);
  const bounds = [
    ['minLength', '≥ %s chars'], ['maxLength', '≤ %s chars'], ['minimum', '≥ %s'], ['maximum', '≤ %s'],
    ['exclusiveMinimum', '> %s'], ['minItems', '≥ %s items'], ['maxItems', '≤ %s items'], ['maxProperties', '≤ %s keys'],
  ];
  for (const [key, text] of bounds) if (schema[key] !== undefined) parts.push(text.replace('%s', schema[key]));
  if (schema.pattern) parts.push(`pattern ${schema.pattern}`);
  if (schema.default !== undefined) parts.push(`default ${JSON.stringify(schema.default)}`);
  return parts.join(' ');
}

/** A schema as a tree of elements. */
export function schemaView(schema, depth = 0) {
  if (!schema || typeof schema !== 'object' || Object.keys(schema).length === 0) return h('span', {class: 'muted'}, 'any');
  if (schema.$ref) {
    const name = refName(schema.$ref);
    return h('a', {href: `#${componentAnchor(name)}`}, name);
  }
  const description = schema.description && h('span', {class: 'muted'}, ` — ${schema.description}`);
  for (const key of ['oneOf', 'anyOf', 'allOf']) {
    if (schema[key]) {
      const word = {oneOf: 'one of', anyOf: 'any of', allOf: 'all of'}[key];
      return h('span', null, word, description, h('ul', null, schema[key].map((part) => h('li', null, schemaView(part, depth + 1)))));
    }
  }
  if (schema.type === 'array' || schema.items) {
    return h('span', null, 'array of ', schemaView(schema.items ?? {}, depth + 1), ' ', h('span', {class: 'muted'}, summary({...schema, type: undefined})), description);
  }
  if (schema.type === 'object' || schema.properties) {
    const required = new Set(schema.required ?? []);
    const properties = Object.entries(schema.properties ?? {});
    const extra = schema.additionalProperties;
    return h(
      'span',
      null,
      'object',
      description,
      h(
        'ul',
        null,
        properties.map(([name, property]) =>
          h('li', null, h('code', null, name), required.has(name) ? h('strong', {title: 'required'}, '*') : '', ': ', schemaView(property, depth + 1)),
        ),
        extra && typeof extra === 'object' && h('li', null, h('code', null, '<any key>'), ': ', schemaView(extra, depth + 1)),
      ),
    );
  }
  return h('span', null, summary(schema) || 'any', description);
}

/** An example value of `schema` (the required fields of objects, the first choice of unions). */
export function example(schema, components, depth = 0) {
  if (!schema || depth > 6) return null;
  if (schema.$ref) return example(components[refName(schema.$ref)], components, depth + 1);
  if (schema.examples?.length) return schema.examples[0];
  if (schema.default !== undefined) return schema.default;
  if (schema.const !== undefined) return schema.const;
  if (schema.enum) return schema.enum[0];
  const union = schema.oneOf ?? schema.anyOf;
  if (union) return example(union[0], components, depth + 1);
  const type = [schema.type].flat()[0];
  if (type === 'object' || schema.properties) {
    const out = {};
    for (const name of schema.required ?? []) out[name] = example(schema.properties?.[name], components, depth + 1);
    return out;
  }
  if (type === 'array') return [example(schema.items, components, depth + 1)];
  if (type === 'integer' || type === 'number') return schema.minimum ?? 1;
  if (type === 'boolean') return false;
  if (type === 'string') return '';
  return null;
}
