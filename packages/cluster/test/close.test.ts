import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { closeInOrder } from '../src/close.js';

/** Records what closeInOrder logs. */
function recorder() {
  const lines: string[] = [];
  return {
    lines,
    logger: {
      warn: (o: { component: string }, msg: string) => void lines.push(`warn ${o.component}: ${msg}`),
      error: (o: { component: string; err: Error }, msg: string) => void lines.push(`error ${o.component}: ${msg}: ${o.err.message}`),
    } as never,
  };
}

describe('stopping the components of posternd', () => {
  it('stops every component in order even when one fails, logs the failure and rethrows the first', async () => {
    const stopped: string[] = [];
    const { lines, logger } = recorder();
    await assert.rejects(
      closeInOrder(
        [
          ['the proxy', () => void stopped.push('proxy')],
          ['the API', () => Promise.reject(new Error('socket busy'))],
          ['the controller', () => { throw new Error('queue broken'); }],
          ['the store', async () => void stopped.push('store')],
        ],
        logger,
      ),
      /socket busy/,
    );
    assert.deepEqual(stopped, ['proxy', 'store']);
    assert.deepEqual(lines, ['error the API: stopping failed: socket busy', 'error the controller: stopping failed: queue broken']);
  });

  it('names a component that is slow to stop while it is awaited, and only that one', async () => {
    const { lines, logger } = recorder();
    await closeInOrder(
      [
        ['the gateway', () => new Promise((r) => setTimeout(r, 120))],
        ['the store', () => {}],
      ],
      logger,
      50,
    );
    assert.deepEqual(lines, ['warn the gateway: still stopping after 0.05 s']);
  });
});
