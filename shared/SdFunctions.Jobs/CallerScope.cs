namespace SdFunctions.Jobs;

/// <summary>
/// Who is calling, as far as Azure Functions lets the app know, for scoping idempotency keys. The host checks the
/// function key but does not tell the worker the key's name, so the scope is a hash of the key itself (callers with
/// different keys never share a scope; rotating a key starts a new scope) joined with the signed-in principal that App
/// Service authentication adds, when it is enabled. Without either (Core Tools skips key checks locally) all callers
/// share one scope.
/// </summary>
public static class CallerScope
{
    public const string Anonymous = "anonymous";

    public static string From(string? functionKey, string? principalId) =>
        string.IsNullOrEmpty(functionKey) && string.IsNullOrEmpty(principalId)
            ? Anonymous
            : JobStore.Hash($"key:{functionKey}\nprincipal:{principalId}");
}
