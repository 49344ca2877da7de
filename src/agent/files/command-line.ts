/**
 * `--on-update 'systemctl reload nginx'` → ['systemctl', 'reload', 'nginx'],
 * for execFile without a shell. Single and double quotes and backslashes
 * group words as in sh; nothing is expanded. Characters a shell would treat
 * specially (pipes, redirections, `;`, `&`, `$`, backquotes, globs) are refused
 * outside quotes, so that a command written for a shell is not silently run
 * as something else: ask for the shell explicitly instead.
 */
export class CommandLineError extends Error {
  override readonly name = 'CommandLineError';
}

const SHELL_SPECIAL = new Set(['|', '&', ';', '<', '>', '(', ')', '$', '`', '*', '?', '[', ']', '{', '}', '~', '#', '\n']);

export function splitCommandLine(line: string): string[] {
  const words: string[] = [];
  let word: string | undefined;
  let i = 0;
  while (i < line.length) {
    const c = line[i]!;
    if (c === ' ' || c === '\t') {
      if (word !== undefined) words.push(word);
      word = undefined;
      i++;
    } else if (c === "'") {
      const end = line.indexOf("'", i + 1);
      if (end < 0) throw new CommandLineError(`unterminated ' in ${JSON.stringify(line)}`);
      word = (word ?? '') + line.slice(i + 1, end);
      i = end + 1;
    } else if (c === '"') {
      let out = '';
      let j = i + 1;
      for (; j < line.length && line[j] !== '"'; j++) {
        if (line[j] === '\\' && j + 1 < line.length && '"\\'.includes(line[j + 1]!)) j++;
        else if (line[j] === '$' || line[j] === '`') throw new CommandLineError(`${line[j]} inside double quotes would be expanded by a shell; use single quotes, or run the command through the shell`);
        out += line[j];
      }
      if (j >= line.length) throw new CommandLineError(`unterminated " in ${JSON.stringify(line)}`);
      word = (word ?? '') + out;
      i = j + 1;
    } else if (c === '\\') {
      if (i + 1 >= line.length) throw new CommandLineError(`a trailing backslash in ${JSON.stringify(line)}`);
      word = (word ?? '') + line[i + 1];
      i += 2;
    } else if (SHELL_SPECIAL.has(c)) {
      throw new CommandLineError(`${JSON.stringify(c)} means something to a shell and the command runs without one; quote it, or run the command through the shell`);
    } else {
      word = (word ?? '') + c;
      i++;
    }
  }
  if (word !== undefined) words.push(word);
  if (words.length === 0) throw new CommandLineError('the command is empty');
  return words;
}
