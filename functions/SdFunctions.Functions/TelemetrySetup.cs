using Azure.Core;
using Azure.Monitor.OpenTelemetry.Exporter;
using Microsoft.Azure.Functions.Worker.OpenTelemetry;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using OpenTelemetry;
using OpenTelemetry.Metrics;
using OpenTelemetry.Trace;
using SdFunctions.Inference.Pipeline;
using SdFunctions.Jobs;

namespace SdFunctions.Functions;

/// <summary>
/// OpenTelemetry in the worker: the job's spans and metrics (<see cref="JobsTelemetry"/>, <see cref="PipelineTelemetry"/>),
/// the worker's invocation spans, logs with their scopes (the job id). Exported to Application Insights when
/// APPLICATIONINSIGHTS_CONNECTION_STRING is set, with the app's managed identity when APPLICATIONINSIGHTS_AUTHENTICATION_STRING
/// says Authorization=AAD (as infra/main.bicep sets it: the resource takes no keys); otherwise collected and dropped.
/// </summary>
public static class TelemetrySetup
{
    public const string ConnectionStringSetting = "APPLICATIONINSIGHTS_CONNECTION_STRING";
    public const string AuthenticationSetting = "APPLICATIONINSIGHTS_AUTHENTICATION_STRING";

    /// <summary>The Functions worker's own activity source: one "Invoke" span per invocation, in the host's trace.</summary>
    public const string WorkerSource = "Microsoft.Azure.Functions.Worker";

    public static OpenTelemetryBuilder AddGenerationTelemetry(this IServiceCollection services, IConfiguration configuration)
    {
        var otel = services.AddOpenTelemetry()
            .WithTracing(t => t.AddSource(JobsTelemetry.Name, PipelineTelemetry.SourceName, WorkerSource))
            .WithMetrics(m => m.AddMeter(JobsTelemetry.Name))
            .WithLogging(configureBuilder: null, configureOptions: o => { o.IncludeScopes = true; o.IncludeFormattedMessage = true; });
        if (configuration[ConnectionStringSetting] is { Length: > 0 })
        {
            // Tells the host the worker exports its own logs, so the host stops forwarding them too (no duplicates). Only here:
            // without an exporter the host's console is where the worker's logs show.
            otel.UseFunctionsWorkerDefaults();
            otel.UseAzureMonitorExporter(o => o.Credential = Credential(configuration[AuthenticationSetting]));
        }
        return otel;
    }

    /// <summary>The identity APPLICATIONINSIGHTS_AUTHENTICATION_STRING names ("Authorization=AAD[;ClientId=…]"), or null for none.</summary>
    public static TokenCredential? Credential(string? authentication)
    {
        var parts = (authentication ?? "").Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(p => p.Split('=', 2)).Where(p => p.Length == 2).ToDictionary(p => p[0], p => p[1], StringComparer.OrdinalIgnoreCase);
        if (!parts.TryGetValue("Authorization", out string? kind) || !kind.Equals("AAD", StringComparison.OrdinalIgnoreCase)) return null;
        return StorageSettings.ManagedIdentity(parts.GetValueOrDefault("ClientId"));
    }
}
