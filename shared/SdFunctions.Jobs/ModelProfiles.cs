using Azure;
using Azure.Storage.Blobs;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Pipeline;

namespace SdFunctions.Jobs;

/// <summary>
/// The model's profile as this service runs it (its size, its default decoder), for the API side: read once per instance
/// without loading the model, so a submit is checked against the model the same way on every instance, loaded or not. From
/// a local bundle: its profile file, else its configs and graphs. From blob storage: the profile file beside the bundle
/// (<c>sdf optimize</c> writes it), else the bundle itself, downloaded as the worker would.
/// </summary>
public sealed class ModelProfiles(IOptions<ModelOptions> model, IOptions<JobsOptions> jobs, BlobServiceClient blobs, ILogger<ModelProfiles> logger)
{
    private ModelProfile? _profile;

    /// <summary>The profile once read (null before, or when it could not be read).</summary>
    public ModelProfile? Current => Volatile.Read(ref _profile);

    /// <summary>Why the profile could not be read last time, and since when (null once it has been read).</summary>
    public PipelineLoadFailure? LastFailure => Volatile.Read(ref _failure);
    private PipelineLoadFailure? _failure;

    /// <summary>The profile; null when the model cannot be read (logged): then only the rules that need no model are checked at submit.</summary>
    public async Task<ModelProfile?> GetAsync(CancellationToken ct)
    {
        if (Current is { } known) return known;
        try
        {
            var read = await ReadAsync(ct);
            var profile = read.For(jobs.Value.Width, jobs.Value.Height, model.Value.DefaultDecoder is { } d && read.Decoders.Contains(d) ? d : null);
            Volatile.Write(ref _profile, profile);
            Volatile.Write(ref _failure, null);
            return profile;
        }
        catch (Exception e) when (e is ModelBundleException || StorageErrors.IsOutage(e) || e is RequestFailedException)
        {
            logger.LogWarning(e, "Could not read the model's profile; submissions are checked against it once it can be read");
            Volatile.Write(ref _failure, LastFailure ?? new PipelineLoadFailure(e, DateTimeOffset.UtcNow)); // since the first failure
            return null;
        }
    }

    private async Task<ModelProfile> ReadAsync(CancellationToken ct)
    {
        var options = model.Value;
        if (options.BlobContainer is { Length: > 0 } container && options.Directory is not { Length: > 0 })
        {
            string prefix = options.BlobPrefix.Trim('/') is { Length: > 0 } p ? p + "/" : "";
            var blob = blobs.GetBlobContainerClient(container).GetBlobClient(prefix + ModelProfile.FileName);
            try
            {
                var content = await blob.DownloadContentAsync(ct);
                return ModelProfile.Parse(content.Value.Content.ToMemory().Span, $"{container}/{blob.Name}");
            }
            catch (RequestFailedException e) when (e.Status == 404)
            {
                logger.LogWarning("{Container}/{Blob} is missing: reading the profile from the bundle itself (upload the bundle with its profile to skip the download)",
                    container, blob.Name);
            }
        }
        string dir = await new ModelLocator(options, blobs, logger).ResolveAsync(ct);
        return await Task.Run(() => ModelProfile.Load(dir), ct);
    }
}
