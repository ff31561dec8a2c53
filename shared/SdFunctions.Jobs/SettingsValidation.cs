using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Pipeline;
using SdFunctions.Jobs.Webhooks;

namespace SdFunctions.Jobs;

/// <summary>
/// Every setting's rule, checked when the app starts (<c>ValidateOnStart</c>): a setting the service cannot run with stops it
/// with one line naming the setting as an operator types it (<c>Jobs__Width</c>), instead of jobs that fail later as the
/// client's fault, a 413 to every request, or webhooks that silently never leave.
/// </summary>
public static class SettingsValidation
{
    /// <summary>SD's UNet halves the latents three times and the VAE scales by 8: sides are multiples of 64.</summary>
    public const int SizeMultiple = 64;
    public const int MinSide = 64, MaxSide = 2048;

    public sealed class Jobs : IValidateOptions<JobsOptions>
    {
        public ValidateOptionsResult Validate(string? name, JobsOptions o)
        {
            var errors = new List<string>();
            foreach (var (setting, side) in new[] { ("Jobs__Width", o.Width), ("Jobs__Height", o.Height) })
                if (side < MinSide || side > MaxSide || side % SizeMultiple != 0)
                    errors.Add($"{setting} is {side}: the image side must be a multiple of {SizeMultiple} from {MinSide} to {MaxSide} pixels");
            if (errors.Count == 0 && PipelineOptions.MemoryNeededFor(o.Width, o.Height) is { } tooBig)
                errors.Add($"Jobs__Width × Jobs__Height: {tooBig}");
            if (o.MaxRequestBytes < 1024) errors.Add($"Jobs__MaxRequestBytes is {o.MaxRequestBytes}: it must be at least 1024 bytes, or no request fits");
            if (o.MaxImageRequestBytes < o.MaxRequestBytes) errors.Add("Jobs__MaxImageRequestBytes must be at least Jobs__MaxRequestBytes");
            if (o.MaxImageBytes < 1) errors.Add("Jobs__MaxImageBytes must be positive");
            if (o.MaxPromptLength < 1) errors.Add("Jobs__MaxPromptLength must be positive");
            if (o.MaxDequeueCount < 1) errors.Add("Jobs__MaxDequeueCount must be positive (and equal host.json's queues.maxDequeueCount)");
            if (o.ProgressInterval <= TimeSpan.Zero || o.HeartbeatInterval <= TimeSpan.Zero || o.ImageUrlLifetime <= TimeSpan.Zero)
                errors.Add("Jobs__ProgressInterval, Jobs__HeartbeatInterval and Jobs__ImageUrlLifetime must be positive times (hh:mm:ss)");
            else if (o.OwnerTimeout < 2 * o.HeartbeatInterval || o.OwnerTimeout < 2 * o.ProgressInterval)
                errors.Add("Jobs__OwnerTimeout must be at least twice Jobs__HeartbeatInterval and Jobs__ProgressInterval, or live runs would be taken over");
            if (o.PublishRetryWindow < TimeSpan.Zero) errors.Add("Jobs__PublishRetryWindow must not be negative");
            if (o.HttpTimeBudget <= TimeSpan.Zero) errors.Add("Jobs__HttpTimeBudget must be a positive time (hh:mm:ss)");
            if (o.StorageMaxRetries < 0 || o.StorageRetryDelay < TimeSpan.Zero || o.StorageNetworkTimeout <= TimeSpan.Zero)
                errors.Add("Jobs__StorageMaxRetries, Jobs__StorageRetryDelay and Jobs__StorageNetworkTimeout are out of range");
            return Result(errors);
        }
    }

    public sealed class Model : IValidateOptions<ModelOptions>
    {
        public ValidateOptionsResult Validate(string? name, ModelOptions o)
        {
            var errors = new List<string>();
            if (o.BundleDirectory is { } dir)
            {
                if (!System.IO.Directory.Exists(dir)) errors.Add($"Model__Directory: {dir} does not exist (relative paths are from the app's folder, {AppContext.BaseDirectory})");
                else if (!File.Exists(Path.Combine(dir, "model_index.json"))) errors.Add($"Model__Directory: {dir} holds no model bundle (no model_index.json)");
            }
            else if (o.BlobContainer is not { Length: > 0 })
                errors.Add("No model is configured: set Model__Directory (a bundle folder, e.g. an Azure Files mount) or Model__BlobContainer (and Model__BlobPrefix)");
            if (o.DecodeTileSize is { } t && (t < GenerationRequest.MinTileSize || t > GenerationRequest.MaxTileSize || t % 8 != 0))
                errors.Add($"Model__DecodeTileSize must be a multiple of 8 from {GenerationRequest.MinTileSize} to {GenerationRequest.MaxTileSize} pixels");
            if (!IsSize(o.MemoryBudget)) errors.Add("Model__MemoryBudget must be a positive size such as 3GB, 2.5GB, 1536MiB or a byte count");
            if (o.Threads is < 1) errors.Add("Model__Threads must be positive (or unset: the physical cores)");
            if (o.DefaultDecoder is { Length: > 0 } d && !DecoderComponent.Names.Contains(d))
                errors.Add($"Model__DefaultDecoder is '{d}': one of {string.Join(", ", DecoderComponent.Names)}, or unset");
            return Result(errors);
        }

        private static bool IsSize(string? text)
        {
            if (text is not { Length: > 0 }) return true;
            try { return MemoryPlan.ParseBytes(text) > 0; }
            catch (FormatException) { return false; }
        }
    }

    public sealed class Webhooks : IValidateOptions<WebhookOptions>
    {
        public ValidateOptionsResult Validate(string? name, WebhookOptions o)
        {
            var errors = new List<string>();
            if (o.SigningSecret is { Length: > 0 } secret && SecretProblem(secret) is { } why)
                errors.Add($"Webhooks__SigningSecret {why} (Standard Webhooks: whsec_ then 24 to 64 random bytes in base64); unset it to send no webhooks");
            if (o.MaxAttempts < 1 || o.RetryDelay < TimeSpan.Zero || o.MaxRetryDelay < o.RetryDelay || o.Concurrency < 1 || o.PerHostConcurrency < 1 || o.Timeout <= TimeSpan.Zero)
                errors.Add("Webhooks__MaxAttempts, __RetryDelay, __MaxRetryDelay, __Timeout, __Concurrency or __PerHostConcurrency are out of range");
            return Result(errors);
        }

        // The secret itself is never part of the message.
        private static string? SecretProblem(string secret)
        {
            if (!secret.StartsWith("whsec_", StringComparison.Ordinal)) return "does not start with whsec_";
            var bytes = new byte[secret.Length];
            if (!Convert.TryFromBase64String(secret["whsec_".Length..], bytes, out int length)) return "is not base64 after whsec_";
            return length is < 24 or > 64 ? $"holds {length} bytes" : null;
        }
    }

    /// <summary>Reads every validated settings section; the first bad one throws <see cref="OptionsValidationException"/> with all its errors.</summary>
    public static void ValidateAll(IServiceProvider services)
    {
        _ = services.GetRequiredService<IOptions<JobsOptions>>().Value;
        _ = services.GetRequiredService<IOptions<ModelOptions>>().Value;
        _ = services.GetRequiredService<IOptions<WebhookOptions>>().Value;
    }

    private static ValidateOptionsResult Result(List<string> errors) => errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);
}
