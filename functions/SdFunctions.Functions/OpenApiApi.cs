using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Mvc;
using Microsoft.Azure.Functions.Worker;

namespace SdFunctions.Functions;

/// <summary>GET /api/openapi.json (anonymous): the API's OpenAPI 3.1 document, as kept in the repository beside this file.</summary>
public sealed class OpenApiApi
{
    /// <summary>The document's bytes, embedded at build time (so the served copy is the repository's, byte for byte).</summary>
    public static readonly byte[] Document = EmbeddedFiles.Read("SdFunctions.Functions.openapi.json");

    [Function("OpenApiDocument")]
    public IActionResult Run([HttpTrigger(AuthorizationLevel.Anonymous, "get", Route = "openapi.json")] HttpRequest req) =>
        new FileContentResult(Document, "application/json; charset=utf-8");
}
