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

    /// <summary>For server-side failures: the id under which the logs hold the details (which clients never see).</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? CorrelationId { get; init; }

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
    public const string RequestTooLarge = "/problems/request-too-large";
    public const string InternalError = "/problems/internal-error";
}

/// <summary>Problems for failures on our side: a stable, safe text and a correlation id; what went wrong goes to the logs.</summary>
public static class ServerProblems
{
    /// <summary>A short id to quote in a support request; the logs carry it beside the exception.</summary>
    public static string NewCorrelationId() => System.Diagnostics.Activity.Current?.TraceId.ToString() is { } trace && trace != "00000000000000000000000000000000"
        ? trace : Guid.NewGuid().ToString("N");

    public static Problem GenerationFailed(string correlationId) => new()
    {
        Type = ProblemTypes.GenerationFailed, Title = "Generation failed", Status = 500, CorrelationId = correlationId,
        Detail = $"The image could not be generated because of an error on our side. Quote {correlationId} when reporting it.",
    };

    /// <summary>The instance could not load its model: not the request's fault, not billed, and /api/health shows it.</summary>
    public static Problem ModelUnavailable(string correlationId) => new()
    {
        Type = ProblemTypes.ServiceUnavailable, Title = "Model unavailable", Status = 503, CorrelationId = correlationId,
        Detail = $"The service could not load its model, so the job did not run and is not billed; its operator sees this in /api/health. Quote {correlationId} when reporting it.",
    };

    /// <summary>What a client sees of a server-side failure (one with a correlation id): only texts written here, never an exception's.</summary>
    public static Problem Shown(Problem failure, string correlationId) =>
        failure.Type == ProblemTypes.ServiceUnavailable && failure.Title == "Model unavailable" ? ModelUnavailable(correlationId) : GenerationFailed(correlationId);

    public static Problem Internal(string correlationId) => new()
    {
        Type = ProblemTypes.InternalError, Title = "Internal error", Status = 500, CorrelationId = correlationId,
        Detail = $"The request failed because of an error on our side. Quote {correlationId} when reporting it.",
    };

    public static Problem Unavailable(string detail) => new()
    {
        Type = ProblemTypes.ServiceUnavailable, Title = "Service unavailable", Status = 503, Detail = detail,
    };
}

/// <summary>A request the service refuses, carried up to the HTTP adapter as its problem.</summary>
public sealed class ProblemException(Problem problem) : Exception(problem.Detail ?? problem.Title)
{
    public Problem Problem { get; } = problem;
}

/// <summary>Recognizes storage that cannot be reached, however the Azure SDK reports it.</summary>
public static class StorageErrors
{
    /// <summary>
    /// A failed storage request, a timeout, a broken connection, or the SDK's "retry failed" AggregateException of them.
    /// Inside that aggregate a TaskCanceledException is the SDK's network timeout (a canceled caller token is thrown as
    /// itself, never aggregated). A socket or I/O error is a connection that broke before the SDK could wrap it; it also
    /// comes bare when the socket dies while the connection is being set up (seen as "Transport endpoint is not connected").
    /// </summary>
    public static bool IsOutage(Exception e) => e switch
    {
        Azure.RequestFailedException or TimeoutException or System.Net.Http.HttpRequestException
            or System.Net.Sockets.SocketException or IOException => true,
        AggregateException a => a.InnerExceptions.Count > 0 && a.InnerExceptions.All(i =>
            i is TaskCanceledException || IsOutage(i)),
        _ => false,
    };
}
