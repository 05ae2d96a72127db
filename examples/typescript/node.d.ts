// The few Node APIs chat.ts uses. Debian packages no `@types/node`, and the example
// should type-check with nothing but Debian's `tsc` and the SDK's own declarations.

declare const process: {
  readonly argv: string[];
  readonly stdin: unknown;
  exitCode: number | undefined;
};

declare module "node:readline" {
  export interface Interface {
    on(event: "line", listener: (line: string) => void): this;
    on(event: "close", listener: () => void): this;
  }
  export function createInterface(options: { input: unknown; terminal?: boolean }): Interface;
}

declare module "node:module" {
  export function createRequire(path: string): (id: string) => unknown;
}
