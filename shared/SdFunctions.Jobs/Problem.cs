using System.Text.Json.Serialization;

namespace SdFunctions.Jobs;

/// <summary>
/// An RFC 9457 problem details object. <see cref="Type"/> is a stable URI reference per kind of problem
/// (see <see cref="ProblemTypes"/>); <see cref="Errors"/> carries field errors for validation problems.
/// </summary>
public sealed record Problem
{
    public required string Type { get; init; }
    public required string Title { get; init; }
    public int Status { get; init; }
    public string? Detail { get; init; }
    public string? Instance { get; init; }

    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public IReadOnlyDictionary<string, string[]>? Errors { get; init; }

    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public IReadOnlyList<string>? Allowed { get; init; }

    public const string ContentType = "application/problem+json";
}

/// <summary>The problem types the API returns. Clients can switch on these; they do not change.</summary>
public static class ProblemTypes
{
    public const string Validation = "/problems/validation";
    public const string MalformedJson = "/problems/malformed-json";
    public const string UnsupportedMediaType = "/problems/unsupported-media-type";
    public const string NotFound = "/problems/not-found";
    public const string MalformedId = "/problems/malformed-id";
    public const string IdempotencyConflict = "/problems/idempotency-key-reused";
    public const string NotFinished = "/problems/image-not-ready";
    public const string AlreadyFinished = "/problems/job-finished";
    public const string GenerationFailed = "/problems/generation-failed";
    public const string ServiceUnavailable = "/problems/service-unavailable";
}

/// <summary>A request the service refuses, carried up to the HTTP adapter as its problem.</summary>
public sealed class ProblemException(Problem problem) : Exception(problem.Detail ?? problem.Title)
{
    public Problem Problem { get; } = problem;
}

/// <summary>Recognizes storage that cannot be reached, however the Azure SDK reports it.</summary>
public static class StorageErrors
{
    /// <summary>A failed storage request, or the SDK's "retry failed" AggregateException of them.</summary>
    public static bool IsOutage(Exception e) =>
        e is Azure.RequestFailedException || (e is AggregateException a && a.InnerExceptions.All(IsOutage));
}
