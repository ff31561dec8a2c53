using System.Text.Json;
using Json.Pointer;
using Json.Schema;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Mvc;
using Microsoft.Net.Http.Headers;

namespace SdFunctions.Functions.Tests;

/// <summary>
/// The repository's OpenAPI document (functions/SdFunctions.Functions/openapi.json) as a checker: it finds the response an
/// operation documents for a status and validates a real answer (status, content type, required headers, body) against its
/// JSON Schema (2020-12, OpenAPI 3.1's dialect, formats checked). Records what it has checked, so tests can prove coverage.
/// </summary>
public sealed class OpenApiContract
{
    public static readonly string DocumentPath = Path.Combine(AzuriteFixture.RepoRoot(), "functions", "SdFunctions.Functions", "openapi.json");
    private static readonly Uri BaseUri = new("https://sdfunctions.test/openapi.json");
    private static readonly EvaluationOptions Evaluation = new() { OutputFormat = OutputFormat.List, RequireFormatValidation = true };

    public static readonly OpenApiContract Document = new();

    private readonly BuildOptions _build;
    public JsonElement Root { get; }

    private OpenApiContract()
    {
        Root = JsonDocument.Parse(File.ReadAllBytes(DocumentPath)).RootElement;
        var registry = new SchemaRegistry();
        registry.Register(BaseUri, new JsonElementBaseDocument(Root, BaseUri));
        _build = new BuildOptions { SchemaRegistry = registry };
    }

    /// <summary>The (path, method, status) triples of every documented response of the HTTP API.</summary>
    public IEnumerable<(string Path, string Method, string Status)> DocumentedResponses() =>
        from path in Root.GetProperty("paths").EnumerateObject()
        from operation in path.Value.EnumerateObject()
        where operation.Name != "parameters"
        from response in operation.Value.GetProperty("responses").EnumerateObject()
        select (path.Name, operation.Name, response.Name);

    /// <summary>The problem types the document lists.</summary>
    public IReadOnlyList<string> ProblemTypes() =>
        [.. Root.GetProperty("components").GetProperty("schemas").GetProperty("ProblemType").GetProperty("enum").EnumerateArray().Select(e => e.GetString()!)];

    /// <summary>The operation object at path and method (an HTTP route, or a webhook when <paramref name="webhook"/>).</summary>
    public JsonElement Operation(string path, string method, bool webhook = false) =>
        Root.GetProperty(webhook ? "webhooks" : "paths").GetProperty(path).GetProperty(method);

    /// <summary>
    /// Checks a function's answer against the documented response: the status is documented, the content type is one of its
    /// media types, its required headers are set, and the body validates against that media type's schema.
    /// </summary>
    /// <returns>The body as JSON (default for a non-JSON body).</returns>
    public JsonElement AssertResponse(string path, string method, IActionResult result, HttpResponse response)
    {
        var (status, contentType, body) = result switch
        {
            ContentResult c => (c.StatusCode ?? 200, c.ContentType, System.Text.Encoding.UTF8.GetBytes(c.Content ?? "")),
            FileContentResult f => (200, f.ContentType, f.FileContents),
            _ => throw new Xunit.Sdk.XunitException($"{method} {path} answered with a {result.GetType().Name}, which the contract does not cover"),
        };
        string where = $"{method.ToUpperInvariant()} {path} → {status}";
        var responses = Operation(path, method).GetProperty("responses");
        Assert.True(responses.TryGetProperty(status.ToString(System.Globalization.CultureInfo.InvariantCulture), out var documented),
            $"{where} is not documented; it answered {Truncate(body)}");
        var (pointer, resolved) = Resolve(documented, $"/paths/{Escape(path)}/{method}/responses/{status}");

        if (resolved.TryGetProperty("headers", out var headers))
            foreach (var header in headers.EnumerateObject())
            {
                var (_, headerObject) = Resolve(header.Value, "");
                bool required = headerObject.TryGetProperty("required", out var r) && r.GetBoolean();
                if (required) Assert.True(response.Headers.ContainsKey(header.Name), $"{where}: the required header {header.Name} is missing");
            }

        string mediaType = MediaTypeHeaderValue.Parse(contentType).MediaType.Value!;
        Assert.True(resolved.TryGetProperty("content", out var content), $"{where}: the document says no body, but it answered {mediaType}");
        Assert.True(content.TryGetProperty(mediaType, out _),
            $"{where}: {mediaType} is not among the documented {string.Join(", ", content.EnumerateObject().Select(p => p.Name))}");
        if (!mediaType.EndsWith("json", StringComparison.Ordinal))
        {
            Assert.NotEmpty(body);
            return default;
        }
        var json = JsonDocument.Parse(body).RootElement;
        AssertValid($"{pointer}/content/{Escape(mediaType)}/schema", json, where);
        return json;
    }

    /// <summary>Validates a JSON value against the schema at a pointer into the document (e.g. /components/schemas/Job).</summary>
    public void AssertValid(string schemaPointer, JsonElement value, string? where = null)
    {
        // The validator resolves the $refs inside (to #/components/schemas/…) against the document itself. In a URI fragment
        // '+' would read as a space: application/problem+json's '+' is percent-encoded.
        var schema = JsonSchema.FromText($$"""{"$ref": "{{BaseUri}}#{{schemaPointer.Replace("+", "%2B", StringComparison.Ordinal)}}"}""", _build);
        var results = schema.Evaluate(value, Evaluation);
        if (results.IsValid) return;
        var errors = (results.Details ?? []).Where(d => d.Errors is { Count: > 0 })
            .SelectMany(d => d.Errors!.Select(e => $"{d.InstanceLocation}: {e.Key}: {e.Value} (schema {d.EvaluationPath})"));
        Assert.Fail($"{where ?? schemaPointer}: the body does not match the document:\n  {string.Join("\n  ", errors.Take(12))}\nbody: {Truncate(System.Text.Encoding.UTF8.GetBytes(value.GetRawText()))}");
    }

    /// <summary>Follows a Reference Object ($ref to #/components/…) to what it names, with its pointer.</summary>
    private (string Pointer, JsonElement Value) Resolve(JsonElement value, string pointer)
    {
        if (!value.TryGetProperty("$ref", out var reference)) return (pointer, value);
        string target = reference.GetString()!;
        Assert.StartsWith("#/", target);
        var found = JsonPointer.Parse(target[1..]).Evaluate(Root)
            ?? throw new Xunit.Sdk.XunitException($"the document's {target} does not exist");
        return Resolve(found, target[1..]);
    }

    private static string Escape(string token) => token.Replace("~", "~0", StringComparison.Ordinal).Replace("/", "~1", StringComparison.Ordinal);

    private static string Truncate(byte[] body) => body.Length > 600 ? System.Text.Encoding.UTF8.GetString(body, 0, 600) + "…" : System.Text.Encoding.UTF8.GetString(body);
}
