/** SVIDs as files for programs that cannot speak the Workload API: one consistent set per update, swapped atomically. */
export { SvidFileWriter, checkLayout, planFileSet, DEFAULT_LAYOUT, CURRENT_LINK, type SvidFileContent, type SvidFileLayout, type WriteResult } from './svid-files.js';
export { SvidFileSetError, type SvidFileSetProblem } from './errors.js';
export { splitCommandLine, CommandLineError } from './command-line.js';
