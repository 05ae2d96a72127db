// @natter/client: the TypeScript SDK of Natter's clients contract (SPEC §13).
export { Natter, RoomHandle } from "./client";
export type { NatterOptions, TokenFunction, WebSocketConstructor, WebSocketLike } from "./client";
export { Rest, OPERATIONS, methodName } from "./rest";
export type { TokenSource } from "./rest";
export * from "./types";
