// Modal dialogs (<dialog> with showModal: the focus stays inside, Escape cancels): the API key prompt and the
// confirmation every destructive or creating action asks for.

import {h} from './dom.js';

function show(dialog, focus) {
  document.body.append(dialog);
  dialog.showModal();
  focus?.focus();
}

/** A Cancel button that is not a submit button: Enter in a field confirms, it never cancels. */
function cancel() {
  return h('button', {type: 'button', class: 'cancel', onclick: (event) => event.target.closest('dialog').close('cancel')}, 'Cancel');
}

/** Ask for the API key. Resolves with it, or null when the person cancels. */
export function keyDialog(refused) {
  return new Promise((resolve) => {
    const input = h('input', {type: 'password', id: 'api-key', name: 'key', autocomplete: 'off', required: true});
    const dialog = h(
      'dialog',
      {class: 'dialog', 'aria-labelledby': 'key-title', 'aria-describedby': 'key-why'},
      h(
        'form',
        {method: 'dialog'},
        h('h2', {id: 'key-title'}, 'API key'),
        refused
          ? h('p', {id: 'key-why', class: 'error', role: 'alert'}, 'memsvc refused the key (401 unauthorized). Enter the right one.')
          : h('p', {id: 'key-why'}, 'memsvc needs an API key (it answered 401 unauthorized).'),
        h('label', {for: 'api-key'}, 'Key'),
        input,
        h('p', {class: 'muted small'}, 'Kept in this tab only (sessionStorage), sent as Authorization: Bearer.'),
        h(
          'div',
          {class: 'buttons'},
          cancel(),
          h('button', {value: 'ok', class: 'primary'}, 'Use this key'),
        ),
      ),
    );
    dialog.addEventListener('close', () => {
      dialog.remove();
      resolve(dialog.returnValue === 'ok' ? input.value : null);
    });
    show(dialog, input);
  });
}

/**
 * Ask before an action. `fields` are optional text inputs ({name, label, placeholder}). Resolves with
 * {name: value} of the fields when confirmed, null when cancelled.
 */
export function confirmDialog({title, text, confirm, danger = false, fields = []}) {
  return new Promise((resolve) => {
    const inputs = fields.map((field) => h('input', {id: `field-${field.name}`, name: field.name, placeholder: field.placeholder ?? ''}));
    const confirmButton = h('button', {value: 'ok', class: danger ? 'danger' : 'primary'}, confirm);
    const dialog = h(
      'dialog',
      {class: 'dialog', 'aria-labelledby': 'confirm-title', 'aria-describedby': 'confirm-text'},
      h(
        'form',
        {method: 'dialog'},
        h('h2', {id: 'confirm-title'}, title),
        h('p', {id: 'confirm-text'}, text),
        fields.map((field, index) => [h('label', {for: `field-${field.name}`}, field.label), inputs[index]]),
        h('div', {class: 'buttons'}, cancel(), confirmButton),
      ),
    );
    dialog.addEventListener('close', () => {
      dialog.remove();
      if (dialog.returnValue !== 'ok') return resolve(null);
      resolve(Object.fromEntries(inputs.map((input) => [input.name, input.value.trim()])));
    });
    show(dialog, inputs[0] ?? dialog.querySelector('button.cancel'));
  });
}
